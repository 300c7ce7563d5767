"""The OpenAI-compatible HTTP server: app factory, routes and ``run_server`` (``kaon serve``).

    uvicorn --> [RequestIdMiddleware] --> [HTTPMetricsMiddleware] --> [CORS] --> [APIKeyMiddleware]
            --> [RequestGuardMiddleware: 415 / 413 / 503 (dead)] --> FastAPI routes
                                                                   |  parse_body (pydantic, 400)
                                                                   v
                         OpenAIServingCompletion / OpenAIServingChat / OpenAIServingResponses
                                                                   |  AsyncLLM (engine thread)

SIGTERM: uvicorn stops accepting connections and waits up to ``--shutdown-timeout`` seconds for
in-flight requests; then they are failed (503 / an SSE error) and the lifespan hook stops the
engine thread. After an engine death the process exits with status 1 (drain.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaon import __version__
from kaon.engine.async_llm import (
    AsyncLLM,
    EngineDeadError,
    RequestFailedError,
    load_engine_off_main_thread,
)
from kaon.entrypoints.openai import serving_tokenization
from kaon.entrypoints.openai.cli_args import check_port_free
from kaon.entrypoints.openai.cors import CORSOptions, add_browser_support
from kaon.entrypoints.openai.drain import DrainingServer
from kaon.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from kaon.entrypoints.openai.protocol_responses import ResponsesRequest
from kaon.entrypoints.openai.request_guard import (
    DEFAULT_MAX_REQUEST_BYTES,
    RequestGuardMiddleware,
)
from kaon.entrypoints.openai.request_id import HEADER as REQUEST_ID_HEADER
from kaon.entrypoints.openai.request_id import RequestIdMiddleware, request_id
from kaon.entrypoints.openai.serving_chat import OpenAIServingChat
from kaon.entrypoints.openai.serving_common import (
    ClientDisconnected,
    OpenAIError,
    ServingContext,
    now,
    parse_body,
)
from kaon.entrypoints.openai.serving_completion import OpenAIServingCompletion
from kaon.entrypoints.openai.serving_responses import OpenAIServingResponses
from kaon.entrypoints.web import add_chat_page, page_url
from kaon.metrics import CONTENT_TYPE, PrometheusStatLogger
from kaon.startup import log_step, seconds_since_process_start

logger = logging.getLogger("kaon")

# With --api-key, everything but the probes (/health, /version, /metrics) needs the key; the API
# docs too (vLLM leaves them open), since they list the routes and their fields.
_PROTECTED_PREFIXES = (
    "/v1/", "/tokenize", "/detokenize", "/tokenizer_info", "/docs", "/redoc", "/openapi.json",
)  # fmt: skip
_ROUTES = (
    "/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/models", "/health",
    "/version", "/metrics", "/tokenize", "/detokenize", "/tokenizer_info",
)  # fmt: skip
# Generation defaults a model's generation_config.json may set (vLLM applies the same ones).
_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def build_app(
    async_llm: AsyncLLM,
    served_model_names: list[str],
    api_key: str | None = None,
    stat_logger: PrometheusStatLogger | None = None,
    cors: CORSOptions | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The FastAPI app serving ``async_llm`` and the chat page at ``/``; starts and stops its
    engine thread (lifespan). ``cors``: cross-origin access (default: none). Request bodies over
    ``max_request_bytes`` bytes get HTTP 413."""
    defaults = async_llm.engine.generation_defaults or {}
    context = ServingContext(
        async_llm, served_model_names, {k: defaults[k] for k in _DEFAULT_KEYS if k in defaults}
    )
    completions, chat = OpenAIServingCompletion(context), OpenAIServingChat(context)
    responses = OpenAIServingResponses(context)
    stat_logger = stat_logger or PrometheusStatLogger(served_model_names[0])
    if async_llm.stat_logger is None:
        async_llm.stat_logger = stat_logger

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async_llm.start()
        logger.info("serving %s", ", ".join(served_model_names))
        log_step("serving", seconds_since_process_start(), "since the process started")
        yield
        await async_llm.shutdown()

    app = FastAPI(title="kaon", version=__version__, lifespan=lifespan)
    _add_error_handlers(app)

    @app.post("/v1/completions")
    async def create_completion(raw_request: Request) -> Response:
        request = parse_body(CompletionRequest, await raw_request.body())
        return await completions.create(request, raw_request)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(raw_request: Request) -> Response:
        request = parse_body(ChatCompletionRequest, await raw_request.body())
        return await chat.create(request, raw_request)

    @app.post("/v1/responses")
    async def create_response(raw_request: Request) -> Response:
        request = parse_body(ResponsesRequest, await raw_request.body())
        return await responses.create(request, raw_request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(context, n) for n in served_model_names]}

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> dict[str, Any]:
        context.check_model(model)
        return _model_card(context, model)

    @app.post("/tokenize")
    async def tokenize(raw_request: Request) -> dict[str, Any]:
        request = parse_body(TokenizeRequest, await raw_request.body())
        return await asyncio.to_thread(serving_tokenization.tokenize, context, request)

    @app.post("/detokenize")
    async def detokenize(raw_request: Request) -> dict[str, Any]:
        request = parse_body(DetokenizeRequest, await raw_request.body())
        return await asyncio.to_thread(serving_tokenization.detokenize, context, request)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return serving_tokenization.tokenizer_info(context)

    @app.get("/health")
    async def health() -> Response:
        if not async_llm.is_running:
            reason = async_llm.dead_reason or "the engine is not running"
            return OpenAIError(
                503, reason, "service_unavailable", code="engine_unavailable"
            ).response()
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(stat_logger.render(), media_type=CONTENT_TYPE)

    add_chat_page(app)
    app.add_middleware(
        RequestGuardMiddleware, max_request_bytes=max_request_bytes,
        dead_reason=lambda: async_llm.dead_reason,
    )  # fmt: skip
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    add_browser_support(app, cors or CORSOptions())
    app.add_middleware(HTTPMetricsMiddleware, stat_logger=stat_logger)
    app.add_middleware(RequestIdMiddleware)  # outermost: 401s carry the id too
    return app


def _model_card(context: ServingContext, name: str) -> dict[str, Any]:
    engine = context.async_llm.engine
    return {
        "id": name, "object": "model", "created": now(), "owned_by": "kaon",
        "root": engine.model_path, "parent": None, "max_model_len": context.max_model_len,
    }  # fmt: skip


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI's envelope; FastAPI's 422 becomes 400."""

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, error: OpenAIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(ClientDisconnected)
    async def disconnected(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_: Request, error: EngineDeadError) -> JSONResponse:
        return OpenAIError(
            503, str(error), "service_unavailable", code="engine_unavailable"
        ).response()

    @app.exception_handler(RequestFailedError)
    async def request_failed(_: Request, error: RequestFailedError) -> JSONResponse:
        return OpenAIError(500, str(error), "internal_error", code="request_failed").response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return OpenAIError(400, f"{param}: {first['msg']}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        status, headers = error.status_code, error.headers  # a 405 carries Allow
        return OpenAIError(status, str(error.detail), code=code, headers=headers).response()

    @app.exception_handler(Exception)
    async def internal(raw_request: Request, error: Exception) -> JSONResponse:
        # Runs in Starlette's outermost middleware, outside RequestIdMiddleware.
        rid = request_id(raw_request)
        logger.exception("unhandled error in request %s", rid)
        message = f"internal error: {type(error).__name__}"
        response = OpenAIError(500, message, "internal_error", code="internal_error").response()
        response.headers[REQUEST_ID_HEADER] = rid
        return response


class APIKeyMiddleware:
    """401 with the envelope unless ``Authorization: Bearer <api_key>`` (constant-time check);
    /health, /version, /metrics and the chat page stay open; so do OPTIONS (browsers send no
    Authorization on a CORS preflight)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"
            and scope["path"].startswith(_PROTECTED_PREFIXES)
        ):
            header = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(header, self.expected):
                error = OpenAIError(
                    401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )  # fmt: skip
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HTTPMetricsMiddleware:
    """Counts responses by route and status code (kaon:http_requests_total)."""

    def __init__(self, app: ASGIApp, stat_logger: PrometheusStatLogger) -> None:
        self.app = app
        self.stat_logger = stat_logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            path = scope["path"]
            route = "/v1/models" if path.startswith("/v1/models/") else path
            self.stat_logger.record_http(route if route in _ROUTES else "other", status)


def run_server(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """``kaon serve`` with one engine in this process (``kaon.entrypoints.serve`` picks this or
    the data-parallel router): load the engine, then serve until SIGTERM / Ctrl-C. ``options``:
    the engine options (``serve_options(args)``). Returns the exit code.

    Raises:
        ValueError: naming a bad engine or server option (the CLI prints it and exits 2).
        FileNotFoundError: the model path does not exist.
    """
    cors = CORSOptions.from_args(args)
    check_port_free(args.host, args.port)  # fail in a second, not after the model loads
    engine = load_engine_off_main_thread(**options)  # keeps the main thread free of OpenMP
    names = args.served_model_name or [engine.model_name]
    stat_logger = PrometheusStatLogger(names[0])
    async_llm = AsyncLLM(engine, args.max_waiting_requests, stat_logger)
    app = build_app(async_llm, names, args.api_key, stat_logger, cors, args.max_request_bytes)
    log_level = (args.log_level or logging.getLevelName(logger.getEffectiveLevel())).lower()
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=log_level, log_config=None,
        access_log=args.access_log,
    )  # fmt: skip
    server = DrainingServer(config, async_llm, args.shutdown_timeout)
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default handler
    # that kills the process (exit -15). A no-op handler makes a graceful stop exit 0 instead.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    url = page_url(args.host, args.port)
    logger.info("chat page at %s (OpenAI API at %sv1)", url, url)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if server.engine_died:
        logger.error("server stopped after an engine error: %s", async_llm.dead_reason)
        return 1  # a supervisor restarts it
    logger.info("server stopped")
    return 0
