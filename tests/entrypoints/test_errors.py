"""Bad requests get the right status and OpenAI's error envelope, never a 500, and the server
still answers normally afterwards."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.entrypoints.utils import API_KEY, MODEL_NAME, ServerProcess

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
USER = [{"role": "user", "content": "Hi"}]
LONG_PROMPT = [1] * 2048  # token ids: as long as max_model_len, so no room to generate
LONG_CHAT = [{"role": "user", "content": "word " * 3000}]
IMAGE = [{"role": "user", "content": [{"type": "image_url"}]}]
CTX = "context_length_exceeded"

# (endpoint, body (dict, or raw bytes), status, param, code)
BAD_REQUESTS = [
    (COMPLETIONS, b'{"prompt": "hi", ', 400, "body", None),
    (COMPLETIONS, b"[1, 2]", 400, "body", None),
    (COMPLETIONS, b"", 400, "body", None),
    (COMPLETIONS, {}, 400, "prompt", None),
    (COMPLETIONS, {"prompt": 5}, 400, "prompt", None),
    (COMPLETIONS, {"prompt": ""}, 400, "prompt", None),
    (COMPLETIONS, {"prompt": []}, 400, "prompt", None),
    (COMPLETIONS, {"prompt": [1, 49152]}, 400, "prompt", None),
    (COMPLETIONS, {"prompt": [-1]}, 400, "prompt", None),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": "16"}, 400, "max_tokens", None),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 1.5}, 400, "max_tokens", None),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", None),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": -3}, 400, "max_tokens", None),
    (COMPLETIONS, {"prompt": "hi", "max_tokens": 10**12}, 400, "max_tokens", CTX),
    (COMPLETIONS, {"prompt": "hi", "temperature": -0.5}, 400, "temperature", None),
    (COMPLETIONS, {"prompt": "hi", "temperature": "hot"}, 400, "temperature", None),
    (COMPLETIONS, {"prompt": "hi", "top_p": 0}, 400, "top_p", None),
    (COMPLETIONS, {"prompt": "hi", "top_p": 1.5}, 400, "top_p", None),
    (COMPLETIONS, {"prompt": "hi", "top_k": -2}, 400, "top_k", None),
    (COMPLETIONS, {"prompt": "hi", "min_p": 2}, 400, "min_p", None),
    (COMPLETIONS, {"prompt": "hi", "n": 0}, 400, "n", None),
    (COMPLETIONS, {"prompt": "hi", "n": 10**9}, 400, "n", None),
    (COMPLETIONS, {"prompt": "hi", "presence_penalty": 3}, 400, "presence_penalty", None),
    (COMPLETIONS, {"prompt": "hi", "repetition_penalty": 0}, 400, "repetition_penalty", None),
    (COMPLETIONS, {"prompt": "hi", "seed": 2**70}, 400, "seed", None),
    (COMPLETIONS, {"prompt": "hi", "stop": [1]}, 400, "stop", None),
    (COMPLETIONS, {"prompt": "hi", "stop": [""]}, 400, "stop", None),
    (COMPLETIONS, {"prompt": "hi", "stop_token_ids": [10**9]}, 400, "stop_token_ids", None),
    (COMPLETIONS, {"prompt": "hi", "logit_bias": {"x": 1}}, 400, "logit_bias", None),
    (COMPLETIONS, {"prompt": "hi", "logit_bias": {"5": 500}}, 400, "logit_bias", None),
    (COMPLETIONS, {"prompt": "hi", "logit_bias": {"99999999": 1}}, 400, "logit_bias", None),
    (COMPLETIONS, {"prompt": "hi", "logprobs": 21}, 400, "logprobs", None),
    (COMPLETIONS, {"prompt": "hi", "min_tokens": 20, "max_tokens": 5}, 400, "min_tokens", None),
    (COMPLETIONS, {"prompt": "hi", "suffix": "!"}, 400, "suffix", None),
    (COMPLETIONS, {"prompt": "hi", "best_of": 3}, 400, "best_of", None),
    (COMPLETIONS, {"prompt": "hi", "frobnicate": True}, 400, "frobnicate", None),
    (COMPLETIONS, {"prompt": "hi", "stream_options": {}}, 400, "stream_options", None),
    (COMPLETIONS, {"prompt": "hi", "model": "gpt-4"}, 404, "model", "model_not_found"),
    (COMPLETIONS, {"prompt": LONG_PROMPT}, 400, "prompt", CTX),
    (COMPLETIONS, {"prompt": LONG_PROMPT, "stream": True}, 400, "prompt", CTX),
    (CHAT, {"messages": []}, 400, "messages", None),
    (CHAT, {"messages": "hi"}, 400, "messages", None),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", None),
    (CHAT, {"messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    (CHAT, {"messages": IMAGE}, 400, "messages[0].content", None),
    (CHAT, {"messages": USER, "tools": []}, 400, "tools", None),
    (CHAT, {"messages": USER, "response_format": {"type": "json_schema"}}, 400, "response_format",
     None),
    (CHAT, {"messages": USER, "top_logprobs": 3}, 400, "top_logprobs", None),
    (CHAT, {"messages": USER, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs", None),
    (CHAT, {"messages": USER, "max_completion_tokens": 0}, 400, "max_completion_tokens", None),
    (CHAT, {"messages": USER, "max_completion_tokens": 5000}, 400, "max_completion_tokens", CTX),
    (CHAT, {"messages": USER, "model": "nope"}, 404, "model", "model_not_found"),
    (CHAT, {"messages": LONG_CHAT}, 400, "messages", CTX),
    (CHAT, {"messages": LONG_CHAT, "stream": True}, 400, "messages", CTX),
    ("/detokenize", {"tokens": [10**9]}, 400, "tokens", None),
    ("/tokenize", {"prompt": "hi", "messages": USER}, 400, "prompt", None),
]  # fmt: skip


def _assert_envelope(response: httpx.Response, status: int, param: str | None, code: str | None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    assert error["code"] == code, error
    return error


@pytest.mark.parametrize(("path", "body", "status", "param", "code"), BAD_REQUESTS)
def test_bad_request_table(
    http: httpx.Client, path: str, body: dict | bytes, status: int, param: str, code: str | None
) -> None:
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = http.post(path, json=body)
    error = _assert_envelope(response, status, param, code)
    if status == 400:
        assert error["type"] == "invalid_request_error"
        assert param.split("[")[0].split(".")[0] in error["message"]  # the message names it


def test_api_key_is_required(server: ServerProcess) -> None:
    body = {"prompt": "hi", "max_tokens": 1}
    missing = httpx.post(f"{server.url}/v1/completions", json=body)
    _assert_envelope(missing, 401, None, "invalid_api_key")
    wrong = httpx.post(
        f"{server.url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"}
    )
    _assert_envelope(wrong, 401, None, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_unknown_route_and_method(http: httpx.Client) -> None:
    _assert_envelope(http.get("/v1/nothing-here"), 404, None, "not_found")
    _assert_envelope(http.get("/v1/completions"), 405, None, "method_not_allowed")


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=1, temperature=-1)
    assert caught.value.body["param"] == "temperature"


def test_server_still_answers_after_bad_requests(server: ServerProcess, client) -> None:
    for body in (b"{", b'{"prompt": [99999999]}', b'{"prompt": "x", "seed": -1e999}'):
        httpx.post(
            f"{server.url}/v1/completions", content=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )  # fmt: skip
    result = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=3, temperature=0)
    assert result.usage.completion_tokens == 3
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert "Traceback" not in server.log_tail(100_000)  # no 500 was logged along the way
