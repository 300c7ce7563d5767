"""The data-parallel front: one OpenAI endpoint that forwards each request to a replica.

    client --> [x-request-id] --> [HTTP metrics] --> [CORS] --> [API key] --> route
      /v1/completions, /v1/chat/completions,  validate + tokenize (RequestInspector)
      /v1/responses
                                              -> Router.route (affinity / outstanding tokens)
                                              -> replica; SSE passes through event by event
      /v1/models, /tokenize, /detokenize,     -> the least loaded replica, as is
      /tokenizer_info, /version
      /health   200 while at least one replica is up;  /metrics  front + replicas
      /replicas JSON: index, pid, port, up, restarts, outstanding requests and tokens
      /         the chat page (kaon/entrypoints/web), served by the front itself

A replica that dies mid-request: a non-streaming request gets a 502 envelope (code
``replica_failed``); a stream gets an SSE error event and ``data: [DONE]``. Every response a
replica produced carries ``x-kaon-replica: <index>``. Every response carries the front's
``x-request-id``, which is also sent to the replica (so both logs name the request alike).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kaon.entrypoints.openai.api_server import (
    APIKeyMiddleware,
    HTTPMetricsMiddleware,
    _add_error_handlers,
)
from kaon.entrypoints.openai.cors import CORSOptions, add_browser_support
from kaon.entrypoints.openai.request_guard import (
    DEFAULT_MAX_REQUEST_BYTES,
    RequestGuardMiddleware,
)
from kaon.entrypoints.openai.request_id import HEADER as REQUEST_ID_HEADER
from kaon.entrypoints.openai.request_id import RequestIdMiddleware, request_id
from kaon.entrypoints.openai.serving_common import (
    SSE_DONE,
    OpenAIError,
    SSEResponse,
    cancel_on_disconnect,
    sse,
)
from kaon.entrypoints.router.metrics import RouterMetrics
from kaon.entrypoints.router.policy import NoHealthyReplicaError, Ticket
from kaon.entrypoints.router.replica import Replica, ReplicaPool
from kaon.entrypoints.router.request_info import RequestInspector, RoutingInfo
from kaon.entrypoints.web import add_chat_page

logger = logging.getLogger("kaon")

REPLICA_HEADER = "x-kaon-replica"
_REQUEST_HEADERS = ("authorization", "content-type", "accept")
_RESPONSE_HEADERS = ("content-type", "retry-after", "cache-control")


def replica_failed(replica: Replica, error: Exception) -> OpenAIError:
    """502 for a request whose replica died or broke the connection while serving it."""
    return OpenAIError(
        502, f"engine replica {replica.index} (pid {replica.pid}) failed while serving this "
        f"request ({type(error).__name__}); it is being restarted, retry the request",
        "service_unavailable", code="replica_failed",
        headers={REPLICA_HEADER: str(replica.index)},
    )  # fmt: skip


def no_replica() -> OpenAIError:
    return OpenAIError(
        503, "no engine replica is available (all are starting or restarting); retry later",
        "service_unavailable", code="engine_unavailable", headers={"Retry-After": "1"},
    )  # fmt: skip


class ReplicaProxy:
    """Forwards HTTP requests to replicas over one pooled httpx client."""

    def __init__(self, pool: ReplicaPool, metrics: RouterMetrics) -> None:
        self.pool, self.router, self.metrics = pool, pool.router, metrics
        timeout = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits)
        self._closing: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.client.aclose()

    async def generate(self, raw_request: Request, info: RoutingInfo, body: bytes) -> Response:
        """Route a completion / chat request and relay the replica's response.

        Raises:
            OpenAIError: 503 when no replica is up; 502 when the replica fails mid-request.
            ClientDisconnected: the client left (the replica request is cancelled with it).
        """
        try:
            ticket = self.router.route(info.prefix_hashes, info.num_tokens)
        except NoHealthyReplicaError:
            raise no_replica() from None
        self.metrics.record_routed(ticket.replica, ticket.reason)
        replica = self.pool.replicas[ticket.replica]
        try:
            upstream = await self._send(raw_request, replica, body)
        except httpx.TransportError as error:
            self.router.release(ticket)
            raise replica_failed(replica, error) from None
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            response = SSEResponse(
                self._relay(upstream, ticket, replica), lambda: self._close(upstream, ticket)
            )
            response.headers[REPLICA_HEADER] = str(replica.index)
            return response
        try:
            content = await cancel_on_disconnect(raw_request, upstream.aread())
        except httpx.TransportError as error:
            raise replica_failed(replica, error) from None
        finally:
            self._close(upstream, ticket)
        return self._response(upstream, content, replica)

    async def forward(self, raw_request: Request, path: str) -> Response:
        """Relay a request that generates nothing (models, tokenizer, version) to the least
        loaded replica. Raises OpenAIError 503 / 502 as ``generate``."""
        try:
            replica = self.pool.replicas[self.router.least_loaded().index]
        except NoHealthyReplicaError:
            raise no_replica() from None
        try:
            upstream = await self._send(raw_request, replica, await raw_request.body(), path)
            content = await upstream.aread()
        except httpx.TransportError as error:
            raise replica_failed(replica, error) from None
        await upstream.aclose()
        return self._response(upstream, content, replica)

    async def _send(
        self, raw_request: Request, replica: Replica, body: bytes, path: str | None = None
    ) -> httpx.Response:
        headers = {k: v for k, v in raw_request.headers.items() if k in _REQUEST_HEADERS}
        headers[REQUEST_ID_HEADER] = request_id(raw_request)
        request = self.client.build_request(
            raw_request.method, replica.url + (path or raw_request.url.path),
            params=raw_request.query_params, headers=headers, content=body,
        )  # fmt: skip
        return await self.client.send(request, stream=True)

    @staticmethod
    def _response(upstream: httpx.Response, content: bytes, replica: Replica) -> Response:
        headers = {k: v for k, v in upstream.headers.items() if k in _RESPONSE_HEADERS}
        headers[REPLICA_HEADER] = str(replica.index)
        return Response(content, status_code=upstream.status_code, headers=headers)

    async def _relay(
        self, upstream: httpx.Response, ticket: Ticket, replica: Replica
    ) -> AsyncIterator[bytes]:
        """The replica's SSE events, each forwarded whole (a replica that dies mid-event never
        leaves half an event on the client's stream); an error event if it dies."""
        buffer = b""
        try:
            async for chunk in upstream.aiter_raw():
                buffer += chunk
                cut = buffer.rfind(b"\n\n")
                if cut >= 0:
                    yield buffer[: cut + 2]
                    buffer = buffer[cut + 2 :]
            if buffer:
                yield buffer
        except httpx.TransportError as error:
            logger.warning("replica %d failed during a stream: %r", replica.index, error)
            yield sse(replica_failed(replica, error).body()).encode()
            yield SSE_DONE.encode()
        finally:
            self.router.release(ticket)

    def _close(self, upstream: httpx.Response, ticket: Ticket) -> None:
        """Release the load and close the replica connection (cancels a request the client
        abandoned: the replica sees the disconnect and aborts it)."""
        self.router.release(ticket)
        task = asyncio.ensure_future(upstream.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def build_router_app(
    pool: ReplicaPool,
    inspector: RequestInspector,
    api_key: str | None = None,
    shutdown_timeout: float = 30.0,
    cors: CORSOptions | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The front's FastAPI app; its lifespan starts the replicas (all must pass /health before
    it serves) and stops them, so no replica outlives the app. Bodies over
    ``max_request_bytes`` and non-JSON POSTs are refused here (413 / 415), before any replica."""
    metrics = RouterMetrics(pool)
    proxy: ReplicaProxy | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal proxy
        try:
            await pool.start()
            proxy = ReplicaProxy(pool, metrics)
            inspector.max_model_len = await _max_model_len(proxy.client, pool)
            yield
        finally:
            if proxy is not None:
                await proxy.aclose()
            await pool.stop(shutdown_timeout)

    app = FastAPI(title="kaon data-parallel front", lifespan=lifespan)
    _add_error_handlers(app)

    def generation_route(path: str, inspect: Callable[[bytes], RoutingInfo]) -> None:
        async def handler(raw_request: Request) -> Response:
            body = await raw_request.body()
            info = inspect(body)  # 400 envelope for bad input, before any replica sees it
            return await proxy.generate(raw_request, info, body)

        app.post(path)(handler)

    generation_route("/v1/completions", inspector.completion)
    generation_route("/v1/chat/completions", inspector.chat)
    generation_route("/v1/responses", inspector.responses)
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/models/{model:path}"),
                         ("GET", "/version"), ("POST", "/tokenize"), ("POST", "/detokenize"),
                         ("GET", "/tokenizer_info")):  # fmt: skip
        app.add_api_route(path, _forwarder(lambda: proxy), methods=[method])

    @app.get("/health")
    async def health() -> Response:
        if not any(r.up for r in pool.replicas):
            return no_replica().response()
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        from kaon.metrics import CONTENT_TYPE

        return Response(await metrics.render(proxy.client), media_type=CONTENT_TYPE)

    @app.get("/replicas")
    async def replicas() -> JSONResponse:
        return JSONResponse({"data": [_replica_state(pool, r) for r in pool.replicas]})

    add_chat_page(app)
    app.add_middleware(
        RequestGuardMiddleware, max_request_bytes=max_request_bytes, dead_reason=lambda: None
    )
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    add_browser_support(app, cors or CORSOptions())
    app.add_middleware(HTTPMetricsMiddleware, stat_logger=metrics)
    app.add_middleware(RequestIdMiddleware)  # outermost: 401s carry the id too
    return app


def _forwarder(get_proxy: Callable[[], ReplicaProxy]) -> Callable[[Request], Awaitable[Response]]:
    async def handler(raw_request: Request) -> Response:
        return await get_proxy().forward(raw_request, raw_request.url.path)

    return handler


def _replica_state(pool: ReplicaPool, replica: Replica) -> dict[str, Any]:
    load = pool.router.replicas[replica.index]
    return {
        "index": replica.index, "pid": replica.pid, "port": replica.port, "up": replica.up,
        "restarts": replica.restarts, "outstanding_requests": load.num_requests,
        "outstanding_tokens": load.num_tokens, "routed": load.num_routed,
    }  # fmt: skip


async def _max_model_len(client: httpx.AsyncClient, pool: ReplicaPool) -> int:
    """The replicas' context length in tokens, from the first replica's /v1/models."""
    replica = pool.replicas[0]
    response = await client.get(f"{replica.url}/v1/models", headers=pool.headers)
    response.raise_for_status()
    return int(response.json()["data"][0]["max_model_len"])
