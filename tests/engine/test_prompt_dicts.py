"""`LLM.generate` takes vLLM's prompt dicts: {"prompt": text} and {"prompt_token_ids": ids}, one
or in a list mixed with plain strings and id lists, with the same greedy outputs as those forms."""

from __future__ import annotations

import pytest

from kaon.sampling_params import SamplingParams

TEXT = "The capital of France is"
GREEDY = SamplingParams(temperature=0.0, max_tokens=4)


def test_prompt_dicts_give_the_plain_forms_outputs(llm):
    ids = llm.tokenizer.encode(TEXT)
    plain = llm.generate([TEXT, ids], GREEDY, use_tqdm=False)
    assert plain[0].outputs[0].text.startswith(" Paris.")
    assert plain[1].outputs[0].token_ids == plain[0].outputs[0].token_ids
    mixed = llm.generate(
        [{"prompt": TEXT}, {"prompt_token_ids": ids}, TEXT, ids], GREEDY, use_tqdm=False
    )
    expected = plain[0].outputs[0]
    for output in mixed:
        assert output.outputs[0].token_ids == expected.token_ids
        assert output.outputs[0].text == expected.text
        assert output.prompt_token_ids == ids
    assert mixed[0].prompt == TEXT and mixed[1].prompt is None
    (single,) = llm.generate({"prompt": TEXT}, GREEDY, use_tqdm=False)
    assert single.outputs[0].token_ids == expected.token_ids
    (single_ids,) = llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)
    assert single_ids.outputs[0].token_ids == expected.token_ids


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"text": TEXT}, "prompt field 'text' is not supported"),
        ({"prompt": TEXT, "multi_modal_data": {}}, "prompt field 'multi_modal_data'"),
        ({}, "exactly one of 'prompt' and 'prompt_token_ids'"),
        ({"prompt": TEXT, "prompt_token_ids": [1]}, "exactly one of 'prompt' and"),
        ({"prompt": 5}, "prompt must be a string, got int"),
        ({"prompt_token_ids": "12"}, "prompt_token_ids must be a list of token ids, got str"),
        ({"prompt_token_ids": [1, "x"]}, "prompt token ids must be integers, got 'x'"),
    ],
)
def test_bad_prompt_dicts_raise_naming_the_field(llm, prompt, message):
    with pytest.raises(ValueError, match=message):
        llm.generate([TEXT, prompt], GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()  # nothing was queued
