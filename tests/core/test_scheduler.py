"""Scheduler with hand-written ModelRunnerOutputs: no model, no torch."""

import pytest

from kaon.core.kv_cache_manager import KVCacheManager
from kaon.core.scheduler import Scheduler
from kaon.outputs import ModelRunnerOutput
from kaon.request import Request, RequestStatus
from kaon.sampling_params import SamplingParams

EOS = 0


def make_scheduler(num_blocks=16, block_size=4, max_num_seqs=8, budget=64, max_model_len=64):
    manager = KVCacheManager(num_blocks, block_size)
    return Scheduler(manager, max_num_seqs, budget, max_model_len)


def make_request(request_id, num_tokens, max_tokens=4, first_token=1, **params):
    tokens = list(range(first_token, first_token + num_tokens))
    return Request(request_id, tokens, SamplingParams(max_tokens=max_tokens, **params), {EOS})


def run_step(scheduler, token_id=7):
    """Schedule once and 'sample' token_id for every request that samples."""
    output = scheduler.schedule()
    sampled = [r.request_id for r in output.scheduled_requests if r.sample]
    runner_output = ModelRunnerOutput(sampled, [token_id] * len(sampled))
    return output, scheduler.update_from_output(output, runner_output)


def test_new_requests_prefill_together_then_decode():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 5))
    scheduler.add_request(make_request("b", 3))
    output, results = run_step(scheduler)
    assert [(r.request_id, len(r.token_ids), r.sample) for r in output.scheduled_requests] == [
        ("a", 5, True),
        ("b", 3, True),
    ]
    assert [n.request_id for n in output.new_requests] == ["a", "b"]
    assert [r.new_token_ids for r in results] == [[7], [7]]
    output, _ = run_step(scheduler)
    assert [(r.token_ids, r.num_computed_tokens) for r in output.scheduled_requests] == [
        ([7], 5),
        ([7], 3),
    ]
    assert output.new_requests == []


def test_chunked_prefill_splits_a_long_prompt():
    scheduler = make_scheduler(budget=4)
    scheduler.add_request(make_request("a", 10))
    chunks = []
    for _ in range(3):
        output, results = run_step(scheduler)
        (request,) = output.scheduled_requests
        chunks.append((request.num_computed_tokens, len(request.token_ids), request.sample))
    assert chunks == [(0, 4, False), (4, 4, False), (8, 2, True)]
    assert results[0].new_token_ids == [7]


def test_max_tokens_and_eos_finish_and_free_blocks():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 3, max_tokens=2))
    scheduler.add_request(make_request("b", 3, max_tokens=5))
    run_step(scheduler)
    _, results = run_step(scheduler)
    assert {r.request_id: r.finish_reason for r in results} == {"a": "length", "b": None}
    _, results = run_step(scheduler, token_id=EOS)
    assert results[0].finish_reason == "stop"
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache_manager.num_free_blocks == 16
    # The runner is told to drop both requests' state.
    output = scheduler.schedule()
    assert output.is_empty and output.finished_req_ids == {"b"}


def test_min_tokens_and_stop_token_ids():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 3, max_tokens=10, min_tokens=2))
    scheduler.add_request(make_request("b", 3, max_tokens=10, stop_token_ids=[9]))
    _, results = run_step(scheduler, token_id=EOS)
    assert {r.request_id: r.finish_reason for r in results} == {"a": None, "b": "stop"}
    # EOS may end the request only after min_tokens tokens (the sampler masks it before).
    _, results = run_step(scheduler, token_id=EOS)
    assert results[0].finish_reason is None
    _, results = run_step(scheduler, token_id=EOS)
    assert results[0].finish_reason == "stop"


def test_max_num_seqs_limits_running_requests_fcfs():
    scheduler = make_scheduler(max_num_seqs=2)
    for name in "abc":
        scheduler.add_request(make_request(name, 2, max_tokens=2))
    output, _ = run_step(scheduler)
    assert [r.request_id for r in output.scheduled_requests] == ["a", "b"]
    output, _ = run_step(scheduler)  # a and b finish here (2 tokens)
    output, _ = run_step(scheduler)
    assert [r.request_id for r in output.scheduled_requests] == ["c"]


def test_preemption_by_recompute_when_blocks_run_out():
    # 4 blocks of 2 tokens: two 3-token prompts take 2 blocks each; the next decode of "a"
    # (position 4) needs a third block, so the newest request "b" is preempted.
    scheduler = make_scheduler(num_blocks=4, block_size=2)
    scheduler.add_request(make_request("a", 3, max_tokens=4))
    scheduler.add_request(make_request("b", 3, max_tokens=4, first_token=50))
    run_step(scheduler)  # both prefilled (tokens 0..2), both sample token 7
    output, _ = run_step(scheduler)  # a and b decode position 3: still within 2 blocks each
    assert len(output.scheduled_requests) == 2
    output, _ = run_step(scheduler)  # position 4 needs a new block for a: b is preempted
    assert [r.request_id for r in output.scheduled_requests] == ["a"]
    b = scheduler.requests["b"]
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert scheduler.stats().num_preemptions == 1
    while scheduler.requests.get("a") is not None:
        run_step(scheduler)
    # b resumes: its first full block is still in the prefix cache, the rest is recomputed.
    output, _ = run_step(scheduler)
    (resumed,) = output.scheduled_requests
    assert resumed.request_id == "b" and resumed.num_computed_tokens == 2
    assert resumed.token_ids == [52, 7, 7] and resumed.sample
    while scheduler.has_unfinished_requests():
        run_step(scheduler)
    assert scheduler.kv_cache_manager.num_free_blocks == 4


def test_abort_waiting_and_running_requests_frees_everything():
    scheduler = make_scheduler(max_num_seqs=1)
    scheduler.add_request(make_request("a", 3, max_tokens=10))
    scheduler.add_request(make_request("b", 3, max_tokens=10))
    run_step(scheduler)
    scheduler.finish_requests(["a", "b", "unknown"], RequestStatus.FINISHED_ABORTED)
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache_manager.num_free_blocks == 16


def test_admission_rejects_prompts_that_cannot_fit():
    scheduler = make_scheduler(max_model_len=8)
    with pytest.raises(ValueError, match="prompt"):
        scheduler.add_request(make_request("a", 8))
    small_cache = make_scheduler(num_blocks=2, block_size=4, max_model_len=64)
    with pytest.raises(ValueError, match="prompt"):
        small_cache.add_request(make_request("b", 9))


def test_prefix_cache_hit_skips_computed_tokens():
    scheduler = make_scheduler(block_size=4)
    scheduler.add_request(make_request("a", 9, max_tokens=1))
    run_step(scheduler)
    scheduler.add_request(make_request("b", 9, max_tokens=1))
    output, _ = run_step(scheduler)
    (request,) = output.scheduled_requests
    assert request.num_computed_tokens == 8 and request.token_ids == [9]
    assert scheduler.stats().prefix_cache_hit_rate == pytest.approx(2 / 4)
