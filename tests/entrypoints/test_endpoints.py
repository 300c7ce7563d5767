"""The small endpoints: /health, /version, /v1/models, /tokenize, /detokenize, /tokenizer_info,
/metrics."""

from __future__ import annotations

import httpx
import openai

import kaon
from tests.entrypoints.utils import MODEL_NAME, ServerProcess


def test_health_and_version_need_no_key(server: ServerProcess) -> None:
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200
    version = httpx.get(f"{server.url}/version")
    assert version.json() == {"version": kaon.__version__}


def test_models_lists_the_default_served_name(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].owned_by == "kaon"
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    raw = client.models.with_raw_response.list().http_response.json()
    assert raw["data"][0]["max_model_len"] == 2048


def test_tokenize_detokenize_round_trip(http: httpx.Client, offline_llm) -> None:
    text = "Hello, world! Ünïcödé 🎉"
    expected = offline_llm.tokenizer.encode(text)
    tokenized = http.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert tokenized["tokens"] == expected
    assert tokenized["count"] == len(expected)
    assert tokenized["max_model_len"] == 2048
    assert len(tokenized["token_strs"]) == len(expected)
    detokenized = http.post("/detokenize", json={"tokens": expected}).json()
    assert detokenized == {"prompt": text}


def test_tokenize_messages_uses_the_chat_template(http: httpx.Client, offline_llm) -> None:
    messages = [{"role": "user", "content": "Hi there"}]
    rendered = offline_llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    result = http.post("/tokenize", json={"messages": messages}).json()
    assert result["tokens"] == offline_llm.tokenizer.encode(rendered)


def test_tokenizer_info_for_remote_tokenizers(http: httpx.Client, offline_llm) -> None:
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>"
    assert info["chat_template"] == offline_llm.tokenizer.chat_template
    assert info["model_max_length"] == 2048


def test_metrics_count_a_request_exactly(server: ServerProcess, client, offline_llm) -> None:
    prompt = "Count these tokens"
    before = server.metrics()
    client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    after = server.metrics()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("kaon:prompt_tokens_total") == len(offline_llm.tokenizer.encode(prompt))
    assert delta("kaon:generation_tokens_total") == 5
    assert delta('kaon:request_success_total{finished_reason="length"}') == 1
    assert delta('kaon:http_requests_total{route="/v1/completions",status="200"}') == 1
    for histogram in ("time_to_first_token", "time_per_output_token", "e2e_request_latency"):
        assert delta(f"kaon:{histogram}_seconds_count") == 1, histogram
    assert after["kaon:e2e_request_latency_seconds_sum"] > before.get(
        "kaon:e2e_request_latency_seconds_sum", 0.0
    )


def test_metrics_expose_the_engine_and_request_series(server: ServerProcess) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "kaon:num_requests_running", "kaon:num_requests_waiting", "kaon:kv_cache_usage_perc",
        "kaon:prefix_cache_hit_rate", "kaon:time_to_first_token_seconds",
        "kaon:time_per_output_token_seconds", "kaon:e2e_request_latency_seconds",
        "kaon:prompt_tokens_total", "kaon:generation_tokens_total", "kaon:http_requests_total",
    ):  # fmt: skip
        assert name in text, name
