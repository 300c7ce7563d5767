"""``x-request-id`` on every response (OpenAI sends one; the openai client exposes it as
``response._request_id`` / ``request_id``).

A client's own ``x-request-id`` (1-128 characters of ``[A-Za-z0-9._:-]``) is echoed back; any
other value, or none, gets a fresh ``req_<32 hex>``. The id lives in ``scope["state"]`` for the
routes (``request_id(raw_request)``) and error handlers, so logs can use it; response ids
(``cmpl-<hex>``, ``chatcmpl-<hex>``, ``resp_<hex>``) share the fresh id's hex
(``response_id(prefix, raw_request)``), also when a client's id is echoed (then a debug log line
links the two). A client id is never used as an engine request id: two clients may send the
same one.
"""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("kaon")

HEADER = "x-request-id"
_STATE_KEY, _HEX_KEY = "request_id", "request_hex"
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def client_request_id(value: str | None) -> str | None:
    """The client's id when it is safe to echo (bounded length and charset), else None."""
    return value if value is not None and _VALID.match(value) else None


def request_id(raw_request: Request) -> str:
    """The x-request-id of this request (a fresh one outside the middleware)."""
    return _state(raw_request.scope)[_STATE_KEY]


def response_id(prefix: str, raw_request: Request) -> str:
    """``{prefix}{hex}``: a unique response / engine request id tied to the x-request-id."""
    return f"{prefix}{_state(raw_request.scope)[_HEX_KEY]}"


def _state(scope: Scope) -> dict:
    state = scope.setdefault("state", {})
    if _HEX_KEY not in state:
        state[_HEX_KEY] = uuid.uuid4().hex
        state[_STATE_KEY] = f"req_{state[_HEX_KEY]}"
    return state


class RequestIdMiddleware:
    """Sets ``x-request-id`` on every HTTP response: success, error and streaming alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope["headers"] if k == HEADER.encode()), None)
        value = client_request_id(sent.decode("latin-1") if sent is not None else None)
        state = _state(scope)
        if value is not None:
            logger.debug("x-request-id %s: response ids end in %s", value, state[_HEX_KEY])
            state[_STATE_KEY] = value

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = state[_STATE_KEY]
            await send(message)

        await self.app(scope, receive, send_with_id)
