"""Scheduler hooks for structured outputs, with a hand-written grammar state (pure Python): a
request whose grammar compiles waits without holding up others; every sampled token reaches the
grammar; a complete grammar ends the request with finish_reason "stop"."""

from kaon.outputs import ModelRunnerOutput
from tests.core.test_scheduler import make_request, make_scheduler, run_step


class FixedLengthGrammar:
    """Ready when told; complete after ``length`` tokens."""

    def __init__(self, length: int, ready: bool = True) -> None:
        self.length, self.ready, self.accepted = length, ready, []
        self.error: str | None = None

    def is_ready(self) -> bool:
        return self.ready

    def accept_token(self, token_id: int) -> bool:
        self.accepted.append(token_id)
        return len(self.accepted) >= self.length


def test_compiling_grammar_waits_without_blocking_the_batch():
    scheduler = make_scheduler()
    grammar = FixedLengthGrammar(length=2, ready=False)
    first = make_request("first", 3, max_tokens=8)
    first.structured_output_request = grammar
    scheduler.add_request(first)
    scheduler.add_request(make_request("second", 3, max_tokens=8))
    output, _ = run_step(scheduler)
    assert [r.request_id for r in output.scheduled_requests] == ["second"]
    assert [r.request_id for r in scheduler.waiting] == ["first"]  # keeps its place
    grammar.ready = True
    output, _ = run_step(scheduler)
    assert [r.request_id for r in output.scheduled_requests] == ["second", "first"]


def test_grammar_sees_every_token_and_ends_the_request():
    scheduler = make_scheduler()
    grammar = FixedLengthGrammar(length=3)
    request = make_request("a", 4, max_tokens=10)
    request.structured_output_request = grammar
    scheduler.add_request(request)
    reasons = []
    for token_id in (5, 6, 7):
        output = scheduler.schedule()
        results = scheduler.update_from_output(output, ModelRunnerOutput(["a"], [token_id]))
        reasons.append(results[0].finish_reason)
    assert grammar.accepted == [5, 6, 7]
    assert reasons == [None, None, "stop"]
    assert not scheduler.has_unfinished_requests()


def test_preemption_keeps_the_grammar_state():
    # 4 blocks of 4 tokens: two requests of 7 prompt tokens cannot both grow past 8 tokens.
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    grammars = {name: FixedLengthGrammar(length=100) for name in ("a", "b")}
    for name in ("a", "b"):
        request = make_request(name, 7, max_tokens=6, first_token=1 if name == "a" else 20)
        request.structured_output_request = grammars[name]
        scheduler.add_request(request)
    for _ in range(12):
        if not scheduler.has_unfinished_requests():
            break
        run_step(scheduler)
    assert scheduler.num_preemptions > 0
    # each grammar saw exactly its request's sampled tokens, none twice after the recompute
    assert grammars["a"].accepted == [7] * 6 and grammars["b"].accepted == [7] * 6
