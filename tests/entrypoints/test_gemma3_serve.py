"""``kaon serve --model <Gemma 3 GGUF>`` with the openai client: the Gemma chat template is
applied (same greedy text as the offline engine) and ``<end_of_turn>`` ends generation with
finish_reason "stop". gemma-3-270m is the pretrained (not instruction-tuned) model, so it rarely
closes its turn by itself: a logit bias makes it emit ``<end_of_turn>``."""

from __future__ import annotations

import openai
import pytest

from tests.entrypoints.utils import API_KEY, offline_chat, start_server

END_OF_TURN, EOS = 106, 1
MESSAGES = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def gemma3_server(tmp_path_factory, gemma3_gguf_path):
    log_path = tmp_path_factory.mktemp("gemma3_server") / "kaon-serve.log"
    process = start_server(log_path, ["--model", gemma3_gguf_path, "--no-access-log"], API_KEY)
    yield process
    assert process.stop() == 0, process.log_tail()


def test_chat_uses_template_and_stops_at_end_of_turn(gemma3_server, gemma3_llm):
    client = openai.OpenAI(
        base_url=f"{gemma3_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300
    )
    assert [m.id for m in client.models.list().data] == ["gemma-3-270m-q4_k_m"]
    response = client.chat.completions.create(
        model="gemma-3-270m-q4_k_m", messages=MESSAGES, temperature=0, max_tokens=48
    )
    expected = offline_chat(gemma3_llm, MESSAGES, max_tokens=48)
    choice = response.choices[0]
    assert choice.finish_reason == expected.finish_reason
    assert choice.message.content == expected.text
    prompt = gemma3_llm.tokenizer.apply_chat_template(MESSAGES)
    assert response.usage.prompt_tokens == len(gemma3_llm.tokenizer.encode(prompt))
    stream = client.chat.completions.create(
        model="gemma-3-270m-q4_k_m", messages=MESSAGES, temperature=0, max_tokens=48, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    for token_id in (END_OF_TURN, EOS):
        forced = client.chat.completions.create(
            model="gemma-3-270m-q4_k_m",
            messages=MESSAGES,
            temperature=0,
            max_tokens=48,
            logit_bias={str(token_id): 100},
        )
        assert forced.choices[0].finish_reason == "stop"
        assert (forced.choices[0].message.content, forced.usage.completion_tokens) == ("", 1)
