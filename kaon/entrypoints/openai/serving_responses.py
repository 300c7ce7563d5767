"""POST /v1/responses: OpenAI's Responses API over the chat template, text in and text out.

The input messages (``instructions`` first, as a system message) are rendered exactly as
/v1/chat/completions renders them, so greedy output equals the chat completion's. The answer
is one ``message`` output item holding one ``output_text`` part. A response cut by
``max_output_tokens`` (or the end of the context) has status "incomplete" and
``incomplete_details: {"reason": "max_output_tokens"}``.

Stream (Server-Sent Events, ``event: <type>`` + ``data: <json>``, no ``[DONE]``), every event
with a ``sequence_number`` counting from 0::

    response.created               response (status in_progress, output [])
    response.in_progress           the same
    response.output_item.added     the message item (status in_progress, content [])
    response.content_part.added    an empty output_text part
    response.output_text.delta     ... one per engine step that produced text
    response.output_text.done      the whole text
    response.content_part.done     the finished part
    response.output_item.done      the finished item
    response.completed             the final response (response.incomplete when cut short)

Spec: https://platform.openai.com/docs/api-reference/responses and openai-python's
``openai/types/responses`` (Response, ResponseStreamEvent).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from kaon.engine.async_llm import EngineDeadError, RequestStream
from kaon.entrypoints.openai.prompt_limits import check_prompt_chars
from kaon.entrypoints.openai.protocol import message_dicts
from kaon.entrypoints.openai.protocol_responses import ResponsesRequest
from kaon.entrypoints.openai.request_id import response_id
from kaon.entrypoints.openai.serving_common import (
    ChoiceState,
    OpenAIError,
    ServingContext,
    SSEResponse,
    abort_all,
    bad_request,
    cancel_on_disconnect,
    merge_streams,
    now,
)
from kaon.sampling_params import SamplingParams


class OpenAIServingResponses:
    """Serves /v1/responses on one AsyncLLM."""

    def __init__(self, context: ServingContext) -> None:
        self.context = context

    async def create(self, request: ResponsesRequest, raw_request: Request) -> Response:
        """Validate, queue and answer one Responses API request.

        Raises:
            OpenAIError: 400 bad input or over-long input, 404 unknown model, 429 overloaded.
        """
        context = self.context
        context.check_model(request.model)
        token_ids = await asyncio.to_thread(self._render, request)
        try:
            max_tokens = context.max_tokens(request.max_output_tokens, len(token_ids), "input")
            params = self._sampling_params(request, max_tokens)
        except (OpenAIError, ValueError) as error:
            raise _name_max_output_tokens(error) from None
        response = _ResponseBuilder(request, params, response_id("", raw_request), context)
        response.num_input_tokens = len(token_ids)
        streams = await context.add_requests(response.id, [token_ids], params)
        if request.stream:
            return SSEResponse(response.events(streams), on_close=lambda: abort_all(streams))
        try:
            result = await cancel_on_disconnect(raw_request, response.full(streams))
        finally:
            abort_all(streams)
        return JSONResponse(result)

    def _render(self, request: ResponsesRequest) -> list[int]:
        tokenizer = self.context.tokenizer
        try:
            text = tokenizer.apply_chat_template(
                message_dicts(request.chat_messages()), add_generation_prompt=True
            )
        except ValueError as error:
            raise bad_request(error) from None
        check_prompt_chars(text, "input", tokenizer, self.context.max_model_len)
        return tokenizer.encode(text)

    def _sampling_params(self, request: ResponsesRequest, max_tokens: int) -> SamplingParams:
        """Unset fields take the model's generation defaults, as chat completions do."""
        defaults = self.context.generation_defaults

        def pick(name: str, value: float | None, fallback: float) -> Any:
            return value if value is not None else defaults.get(name, fallback)

        return SamplingParams(
            temperature=pick("temperature", request.temperature, 1.0),
            top_p=pick("top_p", request.top_p, 1.0),
            top_k=pick("top_k", None, 0),
            min_p=pick("min_p", None, 0.0),
            repetition_penalty=pick("repetition_penalty", None, 1.0),
            max_tokens=max_tokens,
            output_kind_delta=True,
        )


class _ResponseBuilder:
    """The response object of one request, in its in-progress and final states."""

    def __init__(
        self,
        request: ResponsesRequest,
        params: SamplingParams,
        hex_id: str,
        context: ServingContext,
    ) -> None:
        self.request, self.params, self.context = request, params, context
        self.id, self.message_id = f"resp_{hex_id}", f"msg_{hex_id}"
        self.created_at = now()
        self.num_input_tokens = 0
        self.num_cached_tokens = 0
        self.state = ChoiceState()
        self.sequence_number = 0

    # -- objects -------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        if self.state.finish_reason is None:
            return "in_progress"
        return "incomplete" if self.state.finish_reason == "length" else "completed"

    def part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.state.text, "annotations": [], "logprobs": []}

    def item(self, content: list[dict[str, Any]]) -> dict[str, Any]:
        status = self.status
        return {"id": self.message_id, "type": "message", "role": "assistant",
                "status": status, "content": content}  # fmt: skip

    def response(self, final: bool) -> dict[str, Any]:
        """The response object: ``final`` adds the output message and usage."""
        request, status = self.request, self.status
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "background": False, "error": None,
            "incomplete_details": incomplete, "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens, "max_tool_calls": None,
            "model": self.context.model_name,
            "output": [self.item([self.part()])] if final else [],
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
            "store": False, "temperature": self.params.temperature,
            "text": {"format": {"type": "text"}}, "tool_choice": request.tool_choice or "auto",
            "tools": [], "top_logprobs": 0, "top_p": self.params.top_p,
            "truncation": "disabled", "usage": self.usage() if final else None,
            "user": request.user, "metadata": request.metadata or {},
        }  # fmt: skip

    def usage(self) -> dict[str, Any]:
        num_output = len(self.state.token_ids)
        return {
            "input_tokens": self.num_input_tokens,
            "input_tokens_details": {
                "cached_tokens": self.num_cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens": num_output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.num_input_tokens + num_output,
        }

    # -- answers -------------------------------------------------------------------------------

    async def full(self, streams: list[RequestStream]) -> dict[str, Any]:
        async for _, output in merge_streams(streams):
            self.num_cached_tokens = output.num_cached_tokens
            for completion in output.outputs:
                self.state.add(completion)
        return self.response(final=True)

    def event(self, type_: str, **fields: Any) -> str:
        data = {"type": type_, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return f"event: {type_}\ndata: {body}\n\n"

    async def events(self, streams: list[RequestStream]) -> AsyncIterator[str]:
        where = {"item_id": self.message_id, "output_index": 0}
        try:
            yield self.event("response.created", response=self.response(final=False))
            yield self.event("response.in_progress", response=self.response(final=False))
            yield self.event("response.output_item.added", output_index=0, item=self.item([]))
            yield self.event("response.content_part.added", **where, content_index=0,
                             part=self.part())  # fmt: skip
            async for _, output in merge_streams(streams):
                self.num_cached_tokens = output.num_cached_tokens
                for completion in output.outputs:
                    self.state.add(completion)
                    if completion.text:
                        yield self.event("response.output_text.delta", **where, content_index=0,
                                         delta=completion.text, logprobs=[])  # fmt: skip
            text = self.state.text
            yield self.event("response.output_text.done", **where, content_index=0, text=text,
                             logprobs=[])  # fmt: skip
            yield self.event("response.content_part.done", **where, content_index=0,
                             part=self.part())  # fmt: skip
            yield self.event("response.output_item.done", output_index=0,
                             item=self.item([self.part()]))  # fmt: skip
            final = "response.incomplete" if self.status == "incomplete" else "response.completed"
            yield self.event(final, response=self.response(final=True))
        except Exception as error:  # the engine stopped mid-stream
            dead = isinstance(error, EngineDeadError)
            message = str(error) if dead else f"internal error: {type(error).__name__}"
            code = "engine_unavailable" if dead else "internal_error"
            yield self.event("error", code=code, message=message, param=None)
        finally:
            abort_all(streams)


def _name_max_output_tokens(error: Exception) -> OpenAIError:
    """The engine names max_tokens; this API calls it max_output_tokens."""
    bad = error if isinstance(error, OpenAIError) else bad_request(error)  # type: ignore[arg-type]
    if bad.param == "max_tokens":
        bad.param = "max_output_tokens"
        bad.message = bad.message.replace("max_tokens", "max_output_tokens", 1)
    return bad
