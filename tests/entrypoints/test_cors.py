"""kaon/entrypoints/openai/cors.py without a model or a browser: flag parsing, CORS headers,
preflights through the API-key check, HEAD on GET routes and ``Allow`` on 405, on a small app
built like the server's (same error handlers and middleware order)."""

from __future__ import annotations

import argparse

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kaon.entrypoints.openai.api_server import APIKeyMiddleware, _add_error_handlers
from kaon.entrypoints.openai.cli_args import add_server_args
from kaon.entrypoints.openai.cors import CORSOptions, add_browser_support, parse_list
from kaon.entrypoints.web import add_chat_page, page_url

ALLOWED = "http://localhost:3000"
OTHER = "http://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip


def _app(cors: CORSOptions, api_key: str | None = "key") -> TestClient:
    app = FastAPI()
    _add_error_handlers(app)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": []}

    @app.post("/v1/chat/completions")
    async def chat() -> dict:
        return {"ok": True}

    add_chat_page(app)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    add_browser_support(app, cors)
    return TestClient(app)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_server_args(parser)
    return parser.parse_args(list(argv))


def test_flags_accept_json_or_comma_lists() -> None:
    assert CORSOptions.from_args(_args()) == CORSOptions([], ["*"], ["*"], False)
    options = CORSOptions.from_args(
        _args("--allowed-origins", f'["{ALLOWED}", "https://a.b:8443"]',
              "--allowed-methods", "get, post", "--allowed-headers", "authorization,content-type",
              "--allow-credentials")
    )  # fmt: skip
    assert options.allowed_origins == [ALLOWED, "https://a.b:8443"]
    assert options.allowed_methods == ["GET", "POST"]
    assert options.allowed_headers == ["authorization", "content-type"]
    assert options.allow_credentials
    assert parse_list("a, b,,c", "x") == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--allowed-origins", "localhost:3000", "allowed_origins: 'localhost:3000' is not"),
        ("--allowed-origins", "http://a.b/path", "allowed_origins: 'http://a.b/path' is not"),
        ("--allowed-origins", '["*"', "allowed_origins: not a JSON list"),
        ("--allowed-origins", "[1]", "allowed_origins: the JSON list must hold strings"),
        ("--allowed-methods", "GET,PO ST", "allowed_methods: 'PO ST' is not"),
    ],
)
def test_bad_flags_name_the_field(flag: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")):
        CORSOptions.from_args(_args(flag, value))


def test_default_refuses_other_origins() -> None:
    client = _app(CORSOptions())
    preflight = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": ALLOWED})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    response = client.get("/v1/models", headers={"Origin": ALLOWED, "Authorization": "Bearer key"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_allowed_origin_gets_cors_headers_even_on_401() -> None:
    client = _app(CORSOptions([ALLOWED]))
    # The preflight carries no Authorization, yet it is answered (not 401).
    preflight = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": ALLOWED})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers
    refused = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": OTHER})
    assert refused.status_code == 400 and refused.text == "Disallowed CORS origin"
    ok = client.post(
        "/v1/chat/completions", headers={"Origin": ALLOWED, "Authorization": "Bearer key"}
    )
    assert ok.json() == {"ok": True} and ok.headers["access-control-allow-origin"] == ALLOWED
    assert ok.headers["access-control-expose-headers"] == "Retry-After, x-request-id"
    # A wrong key: the page on the allowed origin can read the 401 and show it.
    denied = client.post("/v1/chat/completions", headers={"Origin": ALLOWED})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == ALLOWED
    assert denied.json()["error"]["code"] == "invalid_api_key"


def test_wildcard_and_credentials() -> None:
    client = _app(CORSOptions(["*"]), api_key=None)
    response = client.get("/v1/models", headers={"Origin": OTHER})
    assert response.headers["access-control-allow-origin"] == "*"
    client = _app(CORSOptions(["*"], allow_credentials=True), api_key=None)
    preflight = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": OTHER})
    assert preflight.headers["access-control-allow-origin"] == OTHER  # never "*" with credentials
    assert preflight.headers["access-control-allow-credentials"] == "true"


def test_methods_limit_preflights() -> None:
    client = _app(CORSOptions([ALLOWED], allowed_methods=["GET"]), api_key=None)
    preflight = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": ALLOWED})
    assert preflight.status_code == 400 and preflight.text == "Disallowed CORS method"


def test_head_on_every_get_route_and_allow_on_405() -> None:
    client = _app(CORSOptions())
    for path in ("/v1/models", "/", "/static/app.js", "/static/markdown.js", "/static/style.css"):
        get = client.get(path, headers={"Authorization": "Bearer key"})
        head = client.head(path, headers={"Authorization": "Bearer key"})
        assert (get.status_code, head.status_code) == (200, 200), path
        assert head.headers["content-type"] == get.headers["content-type"]
    not_allowed = client.get("/v1/chat/completions", headers={"Authorization": "Bearer key"})
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
    assert not_allowed.json()["error"] == {
        "message": "Method Not Allowed", "type": "invalid_request_error", "param": None,
        "code": "method_not_allowed",
    }  # fmt: skip
    post = client.post("/v1/models", headers={"Authorization": "Bearer key"})
    assert post.status_code == 405 and sorted(post.headers["allow"].split(", ")) == ["GET", "HEAD"]
    # An OPTIONS that is not a preflight passes the key check and is a 405 with Allow.
    options = client.options("/v1/chat/completions")
    assert options.status_code == 405 and options.headers["allow"] == "POST"
    assert client.get("/static/../__init__.py").status_code == 404
    assert client.get("/static/nope.js").status_code == 404


def test_page_has_a_strict_content_security_policy() -> None:
    page = _app(CORSOptions()).get("/")
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert '<script type="module" src="/static/app.js">' in page.text


def test_page_url() -> None:
    assert page_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert page_url("0.0.0.0", 80) == "http://localhost:80/"
    assert page_url("::1", 8000) == "http://[::1]:8000/"


def test_data_parallel_front_has_the_page_and_cors() -> None:
    """The front's app, without starting replicas (no lifespan): same page, CORS and 405."""
    from kaon.entrypoints.router.policy import Router
    from kaon.entrypoints.router.proxy import build_router_app
    from kaon.entrypoints.router.replica import ReplicaPool
    from kaon.entrypoints.router.request_info import RequestInspector

    pool = ReplicaPool(["true"], Router(1))
    inspector = RequestInspector(None, 16, max_model_len=0)
    client = TestClient(build_router_app(pool, inspector, "key", 1.0, CORSOptions([ALLOWED])))
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.head("/static/app.js").status_code == 200
    preflight = client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": ALLOWED})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    not_allowed = client.get("/v1/chat/completions", headers={"Authorization": "Bearer key"})
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST"
