"""What real clients send: explicit nulls, OpenAI bookkeeping fields, stream_options without
stream, vLLM's continuous_usage_stats (guidellm), legacy prompt scoring (max_tokens 0 + echo +
logprobs) and x-request-id on every response. Real HTTP, the real openai client, greedy values."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.entrypoints.utils import MODEL_NAME, ServerProcess

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
PROMPT = "The capital of France is"
USER = [{"role": "user", "content": "What is the capital of France?"}]


def _post(http: httpx.Client, path: str, body: dict) -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _sse(http: httpx.Client, path: str, body: dict) -> list[dict]:
    """The JSON events of a streamed response, [DONE] checked and dropped."""
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


# -- explicit null = not set ------------------------------------------------------------------


def test_null_optional_fields_take_their_defaults(http: httpx.Client) -> None:
    base = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    expected = _post(http, COMPLETIONS, base)
    names = ("n", "stream", "frequency_penalty", "presence_penalty", "echo", "logprobs", "stop",
             "seed", "top_p", "ignore_eos", "min_tokens", "stream_options", "suffix", "best_of",
             "user", "logit_bias", "not_a_kaon_field")  # fmt: skip
    nulls = dict.fromkeys(names)
    result = _post(http, COMPLETIONS, {**base, **nulls})
    assert len(result["choices"]) == 1  # n = 1, not a 400
    assert result["choices"][0]["text"] == expected["choices"][0]["text"]
    assert result["choices"][0]["logprobs"] is None
    assert result["usage"] == expected["usage"]


def test_null_in_chat_and_nested_models(http: httpx.Client) -> None:
    base = {"messages": USER, "max_tokens": 5, "temperature": 0}
    expected = _post(http, CHAT, base)
    messages = [{**USER[0], "name": None}]
    names = ("n", "logprobs", "top_logprobs", "max_completion_tokens", "add_generation_prompt",
             "skip_special_tokens", "stream")  # fmt: skip
    nulls = dict.fromkeys(names)
    result = _post(http, CHAT, {**base, **nulls, "messages": messages})
    assert (
        result["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
    )
    assert result["choices"][0]["logprobs"] is None
    # stream_options.include_usage: null -> false: no usage chunk
    events = _sse(http, CHAT, {**base, "stream_options": {"include_usage": None}})
    assert all(event["choices"] for event in events)
    assert (
        "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        == expected["choices"][0]["message"]["content"]
    )


def test_null_max_tokens_is_the_rest_of_the_context(http: httpx.Client) -> None:
    # min_tokens 20 masks stop token 1000 for 20 tokens, then its +100 bias makes it next: a
    # budget above the default 16 that ends by itself, without generating to max_model_len.
    body = {"prompt": PROMPT, "min_tokens": 20, "stop_token_ids": [1000],
            "logit_bias": {"1000": 100}, "temperature": 0}  # fmt: skip
    result = _post(http, COMPLETIONS, {**body, "max_tokens": None})
    choice = result["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", 1000)
    assert result["usage"]["completion_tokens"] == 21  # 20 + the stop token
    absent = http.post(COMPLETIONS, json=body)  # max_tokens absent: 16 < min_tokens
    assert absent.status_code == 400
    assert absent.json()["error"]["param"] == "min_tokens"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (COMPLETIONS, {"prompt": None}, "prompt"),
        (CHAT, {"messages": None}, "messages"),
        (CHAT, {"messages": [{"role": None, "content": "hi"}]}, "messages[0].role"),
        ("/detokenize", {"tokens": None}, "tokens"),
    ],
)
def test_null_required_field_is_a_400_naming_it(
    http: httpx.Client, path: str, body: dict, param: str
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["message"] == f"{param}: Field required"


def test_null_in_tokenize(http: httpx.Client) -> None:
    expected = _post(http, "/tokenize", {"prompt": PROMPT})
    result = _post(http, "/tokenize", {"prompt": PROMPT, "add_special_tokens": None,
                                       "messages": None, "return_token_strs": None})  # fmt: skip
    assert result["tokens"] == expected["tokens"] and result["token_strs"] is None
    text = _post(http, "/detokenize", {"tokens": expected["tokens"], "model": None})
    assert text["prompt"] == PROMPT


# -- accepted and ignored ---------------------------------------------------------------------


def test_bookkeeping_fields_change_nothing(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL_NAME, "messages": USER, "max_tokens": 6, "temperature": 0}
    expected = client.chat.completions.create(**kwargs)
    result = client.chat.completions.create(
        **kwargs, store=True, metadata={"team": "eval"}, service_tier="auto", user="u-1",
        prompt_cache_key="k", safety_identifier="s",
    )  # fmt: skip
    assert result.choices[0].message.content == expected.choices[0].message.content
    completion = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0,
        extra_body={"store": False, "metadata": {"a": "b"}, "service_tier": "default"},
    )  # fmt: skip
    plain = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, temperature=0)
    assert completion.choices[0].text == plain.choices[0].text


def test_stream_options_without_stream_is_ignored(http: httpx.Client) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    for path, body in ((COMPLETIONS, {"prompt": PROMPT}), (CHAT, {"messages": USER})):
        base = {**body, "max_tokens": 3, "temperature": 0}
        expected = _post(http, path, base)
        result = _post(http, path, {**base, "stream_options": options, "stream": False})
        assert result["choices"] == expected["choices"]
        assert result["usage"] == expected["usage"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (COMPLETIONS, {"prompt": PROMPT, "suffix": "!"}, "suffix"),
        (CHAT, {"messages": USER, "reasoning_effort": "low"}, "reasoning_effort"),
        (CHAT, {"messages": USER, "stream": True, "stream_options": {"x": 1}}, "stream_options.x"),
        (CHAT, {"messages": USER, "metadata": {"a": 1}}, "metadata.a"),
        (CHAT, {"messages": USER, "store": "yes"}, "store"),
    ],
)
def test_fields_that_would_change_output_stay_400(
    http: httpx.Client, path: str, body: dict, param: str
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# -- continuous_usage_stats (vLLM; guidellm always sends it) ------------------------------------


def test_chat_continuous_usage_in_every_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=USER, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True},
    ))  # fmt: skip
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 6
    num_prompt = final.usage.prompt_tokens
    assert all(c.usage is not None and c.usage.prompt_tokens == num_prompt for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks[:-1]]
    assert counts[0] == 0  # the role chunk, before any token
    assert counts == sorted(counts) and counts[-1] == 6  # the finish chunk: all six
    assert all(c.usage.total_tokens == num_prompt + c.usage.completion_tokens for c in chunks)
    assert chunks[-2].choices[0].finish_reason == "length"


def test_completion_continuous_usage_is_per_choice(http: httpx.Client) -> None:
    body = {"prompt": PROMPT, "max_tokens": 3, "n": 2, "temperature": 0, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    events = _sse(http, COMPLETIONS, body)
    num_prompt = events[-1]["usage"]["prompt_tokens"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 6
    finished = {e["choices"][0]["index"]: e["usage"] for e in events[:-1]
                if e["choices"][0]["finish_reason"] is not None}  # fmt: skip
    expected = {"prompt_tokens": num_prompt, "completion_tokens": 3, "total_tokens": num_prompt + 3}
    assert finished == {0: expected, 1: expected}


def test_continuous_usage_false_and_without_include_usage(http: httpx.Client) -> None:
    body = {"messages": USER, "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    options = {"include_usage": True, "continuous_usage_stats": False}
    off = _sse(http, CHAT, {**body, "stream_options": options})
    assert all(e["usage"] is None for e in off[:-1])
    assert off[-1]["choices"] == [] and off[-1]["usage"]["completion_tokens"] == 3
    alone = _sse(http, CHAT, {**body, "stream_options": {"continuous_usage_stats": True}})
    assert all("usage" not in e for e in alone)  # vLLM: needs include_usage


# -- legacy prompt scoring: max_tokens 0 ------------------------------------------------------


def test_prompt_scoring_equals_echo_with_one_token(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL_NAME, "prompt": PROMPT, "echo": True, "logprobs": 1}
    scored = client.completions.create(**kwargs, max_tokens=0)
    reference = client.completions.create(**kwargs, max_tokens=1, temperature=0)
    choice, ref = scored.choices[0], reference.choices[0].logprobs
    num_prompt = scored.usage.prompt_tokens
    assert choice.text == PROMPT
    assert choice.finish_reason == "length"
    assert scored.usage.completion_tokens == 0 and scored.usage.total_tokens == num_prompt
    assert len(choice.logprobs.tokens) == num_prompt
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert choice.logprobs.tokens == ref.tokens[:num_prompt]
    assert choice.logprobs.token_logprobs == ref.token_logprobs[:num_prompt]
    assert choice.logprobs.top_logprobs == ref.top_logprobs[:num_prompt]
    assert choice.logprobs.text_offset == ref.text_offset[:num_prompt]
    assert all(lp < 0 for lp in choice.logprobs.token_logprobs[1:])


def test_prompt_scoring_streamed_and_batched(http: httpx.Client) -> None:
    prompts = [PROMPT, "Hello, my name is"]
    body = {"prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 0}
    full = _post(http, COMPLETIONS, body)
    assert [c["text"] for c in full["choices"]] == prompts
    assert [c["finish_reason"] for c in full["choices"]] == ["length", "length"]
    events = _sse(http, COMPLETIONS, body)
    for index, prompt in enumerate(prompts):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == prompt
        assert [c["finish_reason"] for c in mine][-1] == "length"
        logprobs = [c["logprobs"] for c in mine if c["logprobs"]]
        assert [lp["token_logprobs"] for lp in logprobs] == [
            full["choices"][index]["logprobs"]["token_logprobs"]
        ]


def test_max_tokens_zero_without_echo_is_empty(http: httpx.Client) -> None:
    result = _post(http, COMPLETIONS, {"prompt": PROMPT, "max_tokens": 0, "logprobs": 2})
    choice = result["choices"][0]
    assert choice["text"] == "" and choice["finish_reason"] == "length"
    assert choice["logprobs"] == {"text_offset": [], "token_logprobs": [], "tokens": [],
                                  "top_logprobs": []}  # fmt: skip
    assert result["usage"]["completion_tokens"] == 0
    tokens = _post(http, "/tokenize", {"prompt": PROMPT})["count"]
    assert result["usage"]["prompt_tokens"] == tokens
    bad = http.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": 0, "min_tokens": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "min_tokens"


# -- x-request-id -----------------------------------------------------------------------------


def test_request_id_on_success_and_errors(client: openai.OpenAI, server: ServerProcess) -> None:
    chat = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=1)
    assert chat._request_id is not None and chat._request_id.startswith("req_")
    assert chat.id == "chatcmpl-" + chat._request_id.removeprefix("req_")
    mine = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=1, extra_headers={"x-request-id": "eval-42:a"}
    )
    assert mine._request_id == "eval-42:a"
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, suffix="x")
    assert error.value.request_id.startswith("req_")
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:  # no API key: 401
        for method, path in (("POST", COMPLETIONS), ("GET", "/health"), ("GET", "/metrics"),
                             ("GET", "/nowhere"), ("GET", "/version")):  # fmt: skip
            response = anonymous.request(method, path, headers={"x-request-id": "probe-1"})
            assert response.headers["x-request-id"] == "probe-1", path
        response = anonymous.post(COMPLETIONS, json={"prompt": "hi"})
        assert response.status_code == 401 and response.headers["x-request-id"].startswith("req_")


def test_request_id_on_streams_and_bad_client_ids(http: httpx.Client) -> None:
    body = {"prompt": PROMPT, "max_tokens": 2, "stream": True}
    with http.stream("POST", COMPLETIONS, json=body, headers={"x-request-id": "s-1"}) as response:
        assert response.headers["x-request-id"] == "s-1"
        response.read()
    for bad in ("x" * 129, "has space", "semi;colon"):
        response = http.post(COMPLETIONS, json={"prompt": PROMPT, "max_tokens": 1},
                             headers={"x-request-id": bad})  # fmt: skip
        assert response.status_code == 200
        fresh = response.headers["x-request-id"]
        assert fresh.startswith("req_") and len(fresh) == 36
        assert response.json()["id"] == "cmpl-" + fresh.removeprefix("req_")
