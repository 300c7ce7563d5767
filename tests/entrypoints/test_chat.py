"""/v1/chat/completions through the real openai client: greedy results equal ``LLM.chat``,
streamed and not; the chunk protocol, content parts, logprobs and usage."""

from __future__ import annotations

import openai

from tests.entrypoints.utils import MODEL_NAME, offline_chat

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_greedy_chat_equals_offline(client: openai.OpenAI, offline_llm) -> None:
    expected = offline_chat(offline_llm, MESSAGES, 20)
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=20, temperature=0
    )
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert result.object == "chat.completion"
    rendered = offline_llm.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    num_prompt = len(offline_llm.tokenizer.encode(rendered))
    assert result.usage.prompt_tokens == num_prompt
    assert result.usage.completion_tokens == len(expected.token_ids)
    assert result.usage.total_tokens == num_prompt + len(expected.token_ids)


def test_streamed_chat_follows_the_chunk_protocol(client: openai.OpenAI, offline_llm) -> None:
    expected = offline_chat(offline_llm, MESSAGES, 20)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=MESSAGES,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
    )
    choice_chunks = [c for c in chunks if c.choices]
    assert choice_chunks[0].choices[0].delta.role == "assistant"  # the first chunk has the role
    assert all(c.choices[0].delta.role is None for c in choice_chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in choice_chunks)
    assert text == expected.text
    reasons = [c.choices[0].finish_reason for c in choice_chunks]
    assert reasons == [None] * (len(reasons) - 1) + [expected.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(
        expected.token_ids
    )
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_content_parts_equal_string_content(client: openai.OpenAI) -> None:
    parts = [
        {"type": "text", "text": "What is the capital"},
        {"type": "text", "text": "of France?"},
    ]
    joined = "What is the capital\nof France?"  # parts are joined with newlines
    answers = [
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": content}],
            max_tokens=8,
            temperature=0,
        )
        .choices[0]
        .message.content  # fmt: skip
        for content in (parts, joined)
    ]
    assert answers[0] == answers[1]


def test_max_completion_tokens_and_stop(client: openai.OpenAI, offline_llm) -> None:
    expected = offline_chat(offline_llm, MESSAGES, 6)
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=6, temperature=0
    )
    assert result.choices[0].message.content == expected.text
    assert result.usage.completion_tokens == len(expected.token_ids)
    word = expected.text.split()[1]
    stopped = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=6, temperature=0, stop=[word]
    )
    assert stopped.choices[0].message.content == expected.text[: expected.text.index(word)]
    assert stopped.choices[0].finish_reason == "stop"


def test_chat_logprobs_shape(client: openai.OpenAI, offline_llm) -> None:
    expected = offline_chat(offline_llm, MESSAGES, 4, logprobs=2)
    result = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
        top_logprobs=2,
    )  # fmt: skip
    content = result.choices[0].logprobs.content
    assert len(content) == len(expected.token_ids)
    tokenizer = offline_llm.tokenizer
    for entry, token_id, position in zip(
        content, expected.token_ids, expected.logprobs, strict=True
    ):
        assert abs(entry.logprob - position[token_id].logprob) < 1e-4
        assert bytes(entry.bytes) == tokenizer.id_to_token_bytes(token_id)
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen one is the top
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_n_choices_stream_each_end_once(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=MESSAGES,
            max_tokens=4,
            temperature=0.7,
            seed=3,
            n=2,
            stream=True,
        )  # fmt: skip
    )
    finishes = [(c.choices[0].index, c.choices[0].finish_reason) for c in chunks if c.choices]
    assert sorted(i for i, reason in finishes if reason) == [0, 1]
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role]
    assert sorted(roles) == [0, 1]
