"""Shared pieces of the OpenAI endpoints: the error envelope, request parsing, prompt length
checks, Server-Sent Events and client-disconnect handling.

Every error leaves the server as OpenAI's envelope

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

and bad user input is always a 4xx: a ValueError from the engine names the field in its first
word (kaon/sampling_params.py), which becomes ``param``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from kaon.engine.async_llm import (
    AsyncLLM,
    EngineDeadError,
    EngineOverloadedError,
    RequestFailedError,
    RequestStream,
)
from kaon.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from kaon.sampling_params import SamplingParams

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")

_PARAM = re.compile(r"^([A-Za-z_][\w.\[\]]*)")
RETRY_AFTER_S = 1  # seconds a client is told to wait when the waiting queue is full
MAX_MESSAGE_CHARS = 1000  # an error message is cut here: it never echoes a whole input back


class OpenAIError(Exception):
    """An error that becomes an HTTP response with OpenAI's error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = f"{message[:MAX_MESSAGE_CHARS]}... ({len(message)} characters, cut)"
        if param is not None and len(param) > 100:
            param = param[:100]
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def shorten(value: str, limit: int = 100) -> str:
    """``value`` cut to ``limit`` characters (with its length), for echoing it in a message."""
    return value if len(value) <= limit else f"{value[:limit]}...({len(value)} characters)"


def bad_request(error: ValueError, code: str | None = None) -> OpenAIError:
    """A 400 for a ValueError whose message starts with the field name (``top_p must be ...``)."""
    message = str(error)
    match = _PARAM.match(message)
    return OpenAIError(400, message, param=match.group(1) if match else None, code=code)


def engine_error(error: Exception) -> OpenAIError:
    """Map AsyncLLM.add_request errors: bad input 400, overload 429, dead engine 503."""
    if isinstance(error, EngineOverloadedError):
        return OpenAIError(
            429, str(error), "rate_limit_error", code="rate_limit_exceeded",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )  # fmt: skip
    if isinstance(error, EngineDeadError):
        return OpenAIError(503, str(error), "service_unavailable", code="engine_unavailable")
    if isinstance(error, ValueError):
        return bad_request(error)
    raise error


def parse_body(model: type[ModelT], body: bytes) -> ModelT:
    """Validate a JSON request body. Raises OpenAIError 400 naming the first bad field."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as error:
        raise validation_error(error) from None


def validation_error(error: ValidationError) -> OpenAIError:
    """A 400 for the first pydantic error; ``param`` is its path (``messages[0].content``)."""
    first = error.errors(include_url=False)[0]
    message = first["msg"].removeprefix("Value error, ")
    param = _loc_to_param(first["loc"])
    if first["type"] == "json_invalid":
        return OpenAIError(400, f"body: not valid JSON ({first['msg']})", param="body")
    if first["type"] == "extra_forbidden":
        message = f"{param}: unsupported parameter (kaon does not implement it)"
    elif first["type"] == "model_type":
        return OpenAIError(400, "body: must be a JSON object", param="body")
    elif param is None:  # a model-level check: the message starts with the field name
        match = _PARAM.match(message)
        param = match.group(1).rstrip(":") if match else None
        return OpenAIError(400, message, param=param)
    else:
        message = f"{param}: {message}"
    return OpenAIError(400, message, param=param)


def _loc_to_param(loc: tuple[int | str, ...]) -> str | None:
    """pydantic's error location as the request's field path; the union-member tags pydantic
    adds (``dict[str,any]``, ``function-after[...]``) are not fields and are left out."""
    param = ""
    for part in loc:
        if isinstance(part, str) and "[" in part:
            continue
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    return param or None


@dataclass
class ServingContext:
    """What every endpoint needs: the engine front, names and limits."""

    async_llm: AsyncLLM
    served_model_names: list[str]
    generation_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def tokenizer(self):
        return self.async_llm.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.async_llm.engine.max_model_len

    def check_model(self, model: str | None) -> None:
        """Raises OpenAIError 404 (code model_not_found) for a model this server does not serve."""
        if model is not None and model not in self.served_model_names:
            raise OpenAIError(
                404, f"The model `{shorten(model)}` does not exist; this server serves "
                f"{', '.join(self.served_model_names)}", param="model", code="model_not_found",
            )  # fmt: skip

    def max_tokens(self, requested: int | None, num_prompt_tokens: int, prompt_param: str) -> int:
        """Generated-token budget: ``requested``, or the rest of the context when None.

        Raises:
            OpenAIError: 400 (code context_length_exceeded) when the prompt leaves no room or
                prompt + max_tokens exceeds max_model_len, as OpenAI and vLLM do.
        """
        limit = self.max_model_len
        if num_prompt_tokens >= limit:
            raise OpenAIError(
                400, f"{prompt_param}: this model's maximum context length is {limit} tokens, "
                f"but the prompt is {num_prompt_tokens} tokens (at least one token must be "
                "generated)", param=prompt_param, code="context_length_exceeded",
            )  # fmt: skip
        if requested is None:
            return limit - num_prompt_tokens
        if requested >= 1 and num_prompt_tokens + requested > limit:
            raise OpenAIError(
                400, f"max_tokens: this model's maximum context length is {limit} tokens; you "
                f"requested {num_prompt_tokens + requested} ({num_prompt_tokens} in the prompt, "
                f"{requested} to generate)", param="max_tokens", code="context_length_exceeded",
            )  # fmt: skip
        return requested  # values < 1 are rejected by SamplingParams, naming max_tokens

    async def add_requests(
        self, request_id: str, prompts: list[list[int]], params: SamplingParams
    ) -> list[RequestStream]:
        """Queue one engine request per prompt (ids ``{request_id}-{i}``); all or none.

        Raises:
            OpenAIError: 400 bad input, 429 overloaded, 503 engine stopped.
        """
        ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        results = await asyncio.gather(
            *(self.async_llm.add_request(i, p, params) for i, p in zip(ids, prompts, strict=True)),
            return_exceptions=True,
        )
        streams = [r for r in results if isinstance(r, RequestStream)]
        for result in results:
            if isinstance(result, BaseException):
                abort_all(streams)
                if isinstance(result, Exception):
                    raise engine_error(result) from None
                raise result
        return streams


@dataclass
class ChoiceState:
    """One choice accumulated from delta outputs (non-streaming responses, usage counts)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    positions: list[PositionLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, completion: CompletionOutput) -> None:
        self.text += completion.text
        self.token_ids += completion.token_ids
        self.positions += completion.logprobs or []
        if completion.finish_reason is not None:
            self.finish_reason = completion.finish_reason
            self.stop_reason = completion.stop_reason


def abort_all(streams: list[RequestStream]) -> None:
    for stream in streams:
        stream.abort()


async def merge_streams(
    streams: list[RequestStream],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from all streams as they arrive; aborts the rest on early exit."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    merged: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def forward(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                merged.put_nowait((index, output))
        except Exception as error:
            merged.put_nowait((index, error))
        merged.put_nowait((index, None))

    tasks = [asyncio.create_task(forward(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await merged.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        abort_all(streams)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": num_completion_tokens,
        "total_tokens": num_prompt_tokens + num_completion_tokens,
    }


def sse(data: dict[str, Any]) -> str:
    """One Server-Sent Event carrying a JSON object (OpenAI's streaming framing)."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(error: Exception) -> str:
    """An error that happens after the stream started (status 200 already sent)."""
    if isinstance(error, EngineDeadError):
        body = OpenAIError(503, str(error), "service_unavailable", code="engine_unavailable")
    elif isinstance(error, RequestFailedError):  # this request alone failed; the engine goes on
        body = OpenAIError(500, str(error), "internal_error", code="request_failed")
    else:
        body = OpenAIError(500, f"internal error: {type(error).__name__}", "internal_error")
    return sse(body.body())


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it when the client disconnects (its requests are then aborted
    by their own ``finally`` blocks). Raises ClientDisconnected in that case."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)
            raise ClientDisconnected()
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always watches for the client going away.

    Starlette only listens for ``http.disconnect`` on older ASGI spec versions; a request still
    waiting in the engine sends nothing, so it would never notice. Here the body task is
    cancelled on disconnect, and ``on_close`` (abort the engine requests) always runs.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as task_group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the connection broke while sending
                        await self.stream_response(send)
                    task_group.cancel_scope.cancel()

                task_group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                task_group.cancel_scope.cancel()
        finally:
            self._on_close()
