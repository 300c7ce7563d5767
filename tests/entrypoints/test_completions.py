"""/v1/completions through the real openai client: greedy results equal the offline LLM's,
streamed and not; prompt forms, n, echo, logprobs, stop strings, usage, UTF-8 in chunks."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.entrypoints.utils import MODEL_NAME, offline_greedy

PROMPT = "The capital of France is"


def _stream_text(client: openai.OpenAI, **kwargs) -> tuple[list[str], list]:
    """(text of every chunk, chunks) of a streamed completion."""
    chunks = list(client.completions.create(model=MODEL_NAME, stream=True, **kwargs))
    return [c.choices[0].text for c in chunks if c.choices], chunks


def test_greedy_completion_equals_offline(client: openai.OpenAI, offline_llm) -> None:
    expected = offline_greedy(offline_llm, [PROMPT], 24)[0]
    result = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0
    )
    assert result.choices[0].text == expected.text
    assert result.choices[0].finish_reason == expected.finish_reason
    assert result.object == "text_completion"
    assert result.model == MODEL_NAME
    num_prompt = len(offline_llm.tokenizer.encode(PROMPT))
    assert result.usage.prompt_tokens == num_prompt
    assert result.usage.completion_tokens == len(expected.token_ids)
    assert result.usage.total_tokens == num_prompt + len(expected.token_ids)


def test_streamed_completion_equals_offline(client: openai.OpenAI, offline_llm) -> None:
    expected = offline_greedy(offline_llm, [PROMPT], 24)[0]
    texts, chunks = _stream_text(
        client, prompt=PROMPT, max_tokens=24, temperature=0, stream_options={"include_usage": True}
    )
    assert "".join(texts) == expected.text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[:-1] == [None] * (len(reasons) - 1)  # only the final chunk has a reason
    assert reasons[-1] == expected.finish_reason
    assert chunks[-1].choices == []  # the usage chunk comes last
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)
    assert all(c.usage is None for c in chunks[:-1])


def test_prompt_forms_and_choice_order(client: openai.OpenAI, offline_llm) -> None:
    prompts = ["Hello, my name is", "The sky is"]
    expected = offline_greedy(offline_llm, prompts, 8)
    ids = [offline_llm.tokenizer.encode(p) for p in prompts]
    for prompt in (prompts, ids):
        result = client.completions.create(
            model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0
        )
        assert [c.index for c in result.choices] == [0, 1]
        assert [c.text for c in result.choices] == [e.text for e in expected]
        assert result.usage.prompt_tokens == sum(len(i) for i in ids)
    single_ids = client.completions.create(
        model=MODEL_NAME, prompt=ids[0], max_tokens=8, temperature=0
    )
    assert single_ids.choices[0].text == expected[0].text


def test_n_counts_the_prompt_once(client: openai.OpenAI, offline_llm) -> None:
    result = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=5, temperature=0.8, seed=7, n=3
    )
    assert sorted(c.index for c in result.choices) == [0, 1, 2]
    assert result.usage.prompt_tokens == len(offline_llm.tokenizer.encode(PROMPT))
    assert result.usage.completion_tokens == 15  # no eos within 5 tokens at this prompt
    assert all(c.finish_reason == "length" for c in result.choices)


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 12, "seed": 1234}
    first = client.completions.create(temperature=1.0, **kwargs).choices[0].text
    second = client.completions.create(temperature=1.0, **kwargs).choices[0].text
    assert first == second


def test_echo_and_prompt_logprobs_like_lm_eval(client: openai.OpenAI, offline_llm) -> None:
    # lm-evaluation-harness local-completions loglikelihood request.
    result = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1
    )
    choice = result.choices[0]
    expected = offline_greedy(offline_llm, [PROMPT], 1, logprobs=1, prompt_logprobs=1)[0]
    assert choice.text == PROMPT + expected.text
    prompt_ids = offline_llm.tokenizer.encode(PROMPT)
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(prompt_ids) + 1
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert "".join(logprobs.tokens) == choice.text
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset[1] == len(logprobs.tokens[0])
    for value, top in zip(logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True):
        assert value <= 0 and max(top.values()) >= value
    generated = expected.logprobs[0][expected.token_ids[0]].logprob
    assert math.isclose(logprobs.token_logprobs[-1], generated, abs_tol=1e-4)
    assert max(logprobs.top_logprobs[-1].values()) == logprobs.token_logprobs[-1]  # greedy


def test_generated_logprobs_match_offline(client: openai.OpenAI, offline_llm) -> None:
    expected = offline_greedy(offline_llm, [PROMPT], 6, logprobs=3)[0]
    result = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3
    )
    logprobs = result.choices[0].logprobs
    offline = [pos[t].logprob for t, pos in zip(expected.token_ids, expected.logprobs, strict=True)]
    assert logprobs.token_logprobs == pytest.approx(offline, abs=1e-4)
    assert all(1 <= len(top) <= 4 for top in logprobs.top_logprobs)  # top 3 + the chosen one
    texts, chunks = _stream_text(client, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    streamed = [v for c in chunks if c.choices and c.choices[0].logprobs
                for v in c.choices[0].logprobs.token_logprobs]  # fmt: skip
    assert streamed == pytest.approx(offline, abs=1e-4)


def test_stop_string_never_leaks_in_stream(client: openai.OpenAI, offline_llm) -> None:
    full = offline_greedy(offline_llm, [PROMPT], 24)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 4]  # a stop string in the middle of the text
    assert stop.strip(), full
    expected = full[: full.index(stop)]
    result = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop]
    )
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].model_extra["stop_reason"] == stop
    texts, chunks = _stream_text(client, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop)
    assert "".join(texts) == expected  # no partial stop string in any chunk either
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"


@pytest.mark.parametrize("prompt", ["Emoji party: 🎉🎉", "中文：你好，世界。我们"])
def test_no_broken_utf8_in_chunks(client: openai.OpenAI, offline_llm, prompt: str) -> None:
    # These greedy completions are made of byte tokens that each hold part of a character.
    expected = offline_greedy(offline_llm, [prompt], 24)[0]
    ids = expected.token_ids
    assert any(_is_partial_utf8(offline_llm.tokenizer.id_to_token_bytes(t)) for t in ids)
    texts, _ = _stream_text(client, prompt=prompt, max_tokens=24, temperature=0)
    assert "".join(texts) == expected.text
    assert not any("\ufffd" in text for text in texts)


def _is_partial_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_max_tokens_omitted_uses_the_rest_of_the_context(http: httpx.Client) -> None:
    body = {"prompt": [1] * 2040, "max_tokens": None, "temperature": 0, "ignore_eos": True}
    result = http.post("/v1/completions", json=body).json()
    assert result["usage"] == {"prompt_tokens": 2040, "completion_tokens": 8, "total_tokens": 2048}
    assert result["choices"][0]["finish_reason"] == "length"
