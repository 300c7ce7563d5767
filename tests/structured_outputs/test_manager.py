"""StructuredOutputManager with the default model's tokenizer (no model): grammar building and
validation, the compile cache, bitmask rows, matcher advance / rollback / completion."""

from __future__ import annotations

import numpy as np
import pytest

from kaon.outputs import ScheduledRequest, SchedulerOutput
from kaon.request import Request
from kaon.sampling_params import SamplingParams, StructuredOutputsParams
from kaon.structured_outputs import StructuredOutputManager, grammar_from_params


@pytest.fixture(scope="module")
def manager(smollm2_tokenizer):
    manager = StructuredOutputManager(
        smollm2_tokenizer, smollm2_tokenizer.vocab_size, smollm2_tokenizer.eos_token_ids
    )
    yield manager
    manager.shutdown()


def _allowed(bitmask: np.ndarray, row: int, vocab_size: int) -> list[int]:
    bits = np.unpackbits(bitmask[row].view(np.uint8), bitorder="little")[:vocab_size]
    return bits.nonzero()[0].tolist()


def _request(manager, request_id: str, params: StructuredOutputsParams) -> Request:
    request = Request(request_id, [1, 2, 3], SamplingParams(structured_outputs=params))
    request.structured_output_request = manager.create_request(request_id, params)
    request.structured_output_request.wait(timeout=60)
    return request


def _step(ids: list[str]) -> SchedulerOutput:
    scheduled = [ScheduledRequest(i, [1], 3, [0], sample=True) for i in ids]
    return SchedulerOutput(scheduled, [], len(ids))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (StructuredOutputsParams(json={"type": "strange"}), "structured_outputs.json"),
        (StructuredOutputsParams(json='{"type": '), "structured_outputs.json"),
        (StructuredOutputsParams(json={"$ref": "#/$defs/none"}), "structured_outputs.json"),
        (StructuredOutputsParams(regex="a{2,1}"), "structured_outputs.regex"),
        (StructuredOutputsParams(grammar="start: b"), "structured_outputs.grammar"),
    ],
)
def test_invalid_constraints_name_the_field(params, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        grammar_from_params(params)


def test_choice_bitmask_advance_and_completion(manager, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    choice = _request(manager, "c", StructuredOutputsParams(choice=["yes", "no"]))
    free = Request("free", [1, 2, 3], SamplingParams())
    output = _step(["free", "c"])
    manager.grammar_bitmask(output, {"free": free, "c": choice})
    assert output.structured_output_request_ids == {"c": 0}  # unconstrained rows get none
    allowed = _allowed(output.grammar_bitmask, 0, tokenizer.vocab_size)
    texts = {tokenizer.decode([token_id]) for token_id in allowed}
    assert texts <= {"y", "ye", "yes", "n", "no"} and "yes" in texts
    structured = choice.structured_output_request
    (yes,) = tokenizer.encode("yes", add_special_tokens=False)
    assert structured.accept_token(yes) is True  # "yes" completes the grammar
    structured.rollback(1)
    assert not structured.is_terminated()
    assert structured.accept_token(yes) is True


def test_json_eos_only_where_the_grammar_accepts(manager, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    schema = {"type": "array", "items": {"type": "integer"}, "maxItems": 3}
    request = _request(manager, "j", StructuredOutputsParams(json=schema))
    structured = request.structured_output_request
    eos = set(tokenizer.eos_token_ids)

    def allowed_now() -> set[int]:
        output = _step(["j"])
        manager.grammar_bitmask(output, {"j": request})
        return set(_allowed(output.grammar_bitmask, 0, tokenizer.vocab_size))

    assert not eos & allowed_now()  # nothing generated yet
    for token_id in tokenizer.encode("[1", add_special_tokens=False):
        assert structured.accept_token(token_id) is False
    assert not eos & allowed_now()  # inside the array
    for token_id in tokenizer.encode(", 2]", add_special_tokens=False):
        structured.accept_token(token_id)
    assert eos <= allowed_now() or structured.is_terminated()


def test_same_constraint_compiles_once(manager):
    params = StructuredOutputsParams(regex="[0-9]{4}")
    before = len(manager.compile_seconds)
    for index in range(3):
        manager.create_request(f"r{index}", params).wait(timeout=60)
    assert len(manager.compile_seconds) == before + 1


def test_overlapped_fill_matches_the_synchronous_one(manager, smollm2_tokenizer):
    """grammar_bitmask(overlap=True) fills on a thread: the same rows once joined, a pickled
    SchedulerOutput carries the array, and the matcher waits for the fill before it advances."""
    import pickle
    from concurrent.futures import Future

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    requests = {
        name: _request(manager, name, StructuredOutputsParams(json=schema)) for name in "xy"
    }
    requests["free"] = Request("free", [1, 2, 3], SamplingParams())
    (brace,) = smollm2_tokenizer.encode("{", add_special_tokens=False)
    assert requests["y"].structured_output_request.accept_token(brace) is False
    synchronous = _step(["x", "free", "y"])
    manager.grammar_bitmask(synchronous, requests)
    expected = synchronous.grammar_bitmask.copy()
    overlapped = _step(["x", "free", "y"])
    manager.grammar_bitmask(overlapped, requests, overlap=True)
    assert isinstance(overlapped.grammar_bitmask, Future)
    assert overlapped.structured_output_request_ids == {"x": 0, "y": 1}
    assert np.array_equal(pickle.loads(pickle.dumps(overlapped)).grammar_bitmask, expected)
    assert np.array_equal(overlapped.grammar_bitmask.result(), expected)
    assert requests["x"].structured_output_request.accept_token(brace) is False


def test_no_constrained_request_leaves_the_step_untouched(smollm2_tokenizer):
    manager = StructuredOutputManager(
        smollm2_tokenizer, smollm2_tokenizer.vocab_size, smollm2_tokenizer.eos_token_ids
    )
    output = _step(["free"])
    manager.grammar_bitmask(output, {"free": Request("free", [1], SamplingParams())}, True)
    assert output.grammar_bitmask is None and output.structured_output_request_ids == {}
    manager.shutdown()
