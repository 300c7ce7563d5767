"""RequestGuardMiddleware: what every HTTP request must pass before a route sees it.

    request --> engine dead?           503 engine_unavailable (every path but /metrics)
            --> POST not JSON?         415 unsupported_media_type
            --> Content-Length > max?  413 request_too_large (nothing read)
            --> body grows past max?   413 request_too_large (checked per received chunk)
            --> the app

Why Content-Type: a browser sends a cross-origin POST whose Content-Type is text/plain (or one
of the other "simple" types) without a CORS preflight, so any web page could drive a server on
localhost. Requiring ``application/json`` makes such a request a preflighted one, which the
server does not allow. OPTIONS, GET and HEAD are not checked.

Why a body limit: the body is read whole and parsed on the event loop; a 16 MB body would stall
every other request while it is parsed (docs/serving.md, "Limits").
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaon.entrypoints.openai.serving_common import OpenAIError

DEFAULT_MAX_REQUEST_BYTES = 8 * 2**20  # 8 MiB: --max-request-bytes default
_OPEN_WHEN_DEAD = ("/metrics",)  # still served after an engine death, for post-mortems


class RequestTooLargeError(OpenAIError):
    """The request body is larger than --max-request-bytes (HTTP 413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413, f"body: the request body is larger than the server's limit of {max_bytes} "
            "bytes (--max-request-bytes)", param="body", code="request_too_large",
        )  # fmt: skip


class RequestGuardMiddleware:
    """ASGI middleware: 503 after an engine death, 415 for a non-JSON POST, 413 past the size
    limit; every answer is OpenAI's error envelope.

    Args:
        app: the wrapped ASGI app.
        max_request_bytes: largest accepted body, in bytes.
        dead_reason: returns why the engine is dead, or None while it runs.
    """

    def __init__(
        self, app: ASGIApp, max_request_bytes: int, dead_reason: Callable[[], str | None]
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.dead_reason = dead_reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = self._check(scope)
        if error is not None:
            await error.response()(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _check(self, scope: Scope) -> OpenAIError | None:
        reason = self.dead_reason()
        if reason is not None and scope["path"] not in _OPEN_WHEN_DEAD:
            return OpenAIError(503, reason, "service_unavailable", code="engine_unavailable")
        if scope["method"] != "POST":
            return None
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            shown = media_type.decode("latin-1")[:100] or "none"
            return OpenAIError(
                415, f"Content-Type must be application/json, got {shown}",
                code="unsupported_media_type",
            )  # fmt: skip
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_request_bytes):
            return RequestTooLargeError(self.max_request_bytes)
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises RequestTooLargeError (a 413 through the app's OpenAIError
        handler) once the body received so far passes the limit (chunked uploads)."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise RequestTooLargeError(self.max_request_bytes)
            return message

        return limited_receive
