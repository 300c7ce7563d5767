"""POST /v1/chat/completions: messages -> the model's chat template -> one engine request ->
a chat.completion object or chat.completion.chunk SSE events.

Stream shape (per choice): a first chunk with ``delta: {"role": "assistant", "content": ""}``,
content chunks, then one final chunk with an empty delta and the finish_reason; then the usage
chunk (``stream_options.include_usage``) and ``data: [DONE]``. With vLLM's
``stream_options.continuous_usage_stats`` every chunk also carries ``usage``: the prompt and
the tokens generated so far for that chunk's choice. With tools, each finished call is one chunk
``delta: {"tool_calls": [{"index", "id", "type", "function": {"name", "arguments"}}]}`` carrying
the whole arguments string (tool_calls/, docs/tool_calling.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from kaon.engine.async_llm import RequestStream
from kaon.entrypoints.openai.logprobs import LogprobFormatter
from kaon.entrypoints.openai.prompt_limits import check_prompt_chars
from kaon.entrypoints.openai.protocol import ChatCompletionRequest
from kaon.entrypoints.openai.request_id import response_id
from kaon.entrypoints.openai.serving_common import (
    SSE_DONE,
    ChoiceState,
    OpenAIError,
    ServingContext,
    SSEResponse,
    abort_all,
    bad_request,
    cancel_on_disconnect,
    merge_streams,
    now,
    sse,
    sse_error,
    usage,
)
from kaon.entrypoints.openai.tool_calls import (
    ToolCallPlan,
    ToolCallStreamParser,
    render_inputs,
    tool_finish_reason,
)
from kaon.outputs import CompletionOutput


class OpenAIServingChat:
    """Serves /v1/chat/completions on one AsyncLLM."""

    def __init__(self, context: ServingContext) -> None:
        self.context = context
        self.formatter = LogprobFormatter(context.tokenizer)

    async def create(self, request: ChatCompletionRequest, raw_request: Request) -> Response:
        """Validate, queue and answer one chat request.

        Raises:
            OpenAIError: 400 bad input or over-long conversation, 404 unknown model,
                429 overloaded.
        """
        context = self.context
        context.check_model(request.model)
        plan = ToolCallPlan.create(
            request.tool_dicts, request.effective_tool_choice, request.parallel_tool_calls
        )
        token_ids = await asyncio.to_thread(self.render, request, plan)
        max_tokens = request.requested_max_tokens
        try:
            context.max_tokens(max_tokens, len(token_ids), "messages")
            params = request.sampling_params(
                max_tokens, request.num_logprobs, None, context.generation_defaults
            )
            if plan is not None:
                params = plan.constrain(params)
        except (OpenAIError, ValueError) as error:
            raise _name_max_tokens(request, error) from None
        request_id = response_id("chatcmpl-", raw_request)
        streams = await context.add_requests(request_id, [token_ids], params)
        if request.stream:
            body = self._stream(request, plan, request_id, len(token_ids), streams)
            return SSEResponse(body, on_close=lambda: abort_all(streams))
        try:
            result = await cancel_on_disconnect(
                raw_request, self._full(request, plan, request_id, len(token_ids), streams)
            )
        finally:
            abort_all(streams)
        return JSONResponse(result)

    def render(self, request: ChatCompletionRequest, plan: ToolCallPlan | None = None) -> list[int]:
        """Prompt token ids of the conversation, as ``LLM.chat`` builds them, with the tools of
        ``plan`` shown to the model (tool_calls/rendering.py).

        Raises:
            OpenAIError: 400 naming messages[i] (from the tokenizer's template checks).
        """
        tokenizer = self.context.tokenizer
        try:
            messages, variables = render_inputs(
                request.message_dicts(), plan.tools if plan else None, tokenizer.chat_template or ""
            )
            text = tokenizer.apply_chat_template(
                messages, add_generation_prompt=request.add_generation_prompt, **variables
            )
        except ValueError as error:
            raise bad_request(error) from None
        check_prompt_chars(text, "messages", tokenizer, self.context.max_model_len)
        return tokenizer.encode(text)

    async def _full(
        self,
        request: ChatCompletionRequest,
        plan: ToolCallPlan | None,
        request_id: str,
        num_prompt_tokens: int,
        streams: list[RequestStream],
    ) -> dict[str, Any]:
        states = [ChoiceState() for _ in range(request.n)]
        async for _, output in merge_streams(streams):
            for completion in output.outputs:
                states[completion.index].add(completion)
        choices = []
        for index, state in enumerate(states):
            logprobs = None
            if request.logprobs:
                num_top = request.top_logprobs or 0
                logprobs = self.formatter.chat(state.token_ids, state.positions, num_top)
            message: dict[str, Any] = {"role": "assistant", "content": state.text}
            finish_reason = state.finish_reason
            if plan is not None:
                parsed = plan.parse(state.text)
                message["content"] = parsed.content
                if parsed.tool_calls:
                    message["tool_calls"] = [call.to_openai() for call in parsed.tool_calls]
                finish_reason = tool_finish_reason(
                    finish_reason, len(parsed.tool_calls), parsed.truncated_call
                )
            choices.append({
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
                "stop_reason": state.stop_reason,
            })  # fmt: skip
        num_completion_tokens = sum(len(state.token_ids) for state in states)
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": now(),
            "model": self.context.model_name,
            "choices": choices,
            "usage": usage(num_prompt_tokens, num_completion_tokens),
            "system_fingerprint": None,
        }

    async def _stream(
        self,
        request: ChatCompletionRequest,
        plan: ToolCallPlan | None,
        request_id: str,
        num_prompt_tokens: int,
        streams: list[RequestStream],
    ) -> AsyncIterator[str]:
        created, model = now(), self.context.model_name
        num_tokens = [0] * request.n  # generated tokens per choice

        def chunk(index: int, delta: dict[str, Any], logprobs: Any, finish: Any, stop: Any) -> str:
            choice = {"index": index, "delta": delta, "logprobs": logprobs,
                      "finish_reason": finish, "stop_reason": stop}  # fmt: skip
            data = {"id": request_id, "object": "chat.completion.chunk", "created": created}
            data = {**data, "model": model, "choices": [choice]}
            if request.include_continuous_usage:  # vLLM: this choice's tokens so far
                data["usage"] = usage(num_prompt_tokens, num_tokens[index])
            elif request.include_usage:
                data["usage"] = None
            return sse(data)

        parsers = [plan.stream_parser() for _ in range(request.n)] if plan else None
        try:
            for index in range(request.n):
                yield chunk(index, {"role": "assistant", "content": ""}, None, None, None)
            async for _, output in merge_streams(streams):
                for completion in output.outputs:
                    num_tokens[completion.index] += len(completion.token_ids)
                    logprobs = None
                    if request.logprobs and completion.token_ids:
                        logprobs = self.formatter.chat(
                            completion.token_ids,
                            completion.logprobs or [],
                            request.top_logprobs or 0,
                        )
                    text, calls, reason = completion.text, [], completion.finish_reason
                    if parsers is not None:
                        text, calls, reason = _parse_delta(parsers[completion.index], completion)
                    if text or logprobs is not None:
                        delta = {"content": text}
                        yield chunk(completion.index, delta, logprobs, None, None)
                    for call in calls:
                        delta = {"tool_calls": [call]}
                        yield chunk(completion.index, delta, None, None, None)
                    if completion.finish_reason is not None:
                        stop = completion.stop_reason
                        yield chunk(completion.index, {}, None, reason, stop)
            if request.include_usage:
                data = {"id": request_id, "object": "chat.completion.chunk", "created": created}
                yield sse({**data, "model": model, "choices": [],
                           "usage": usage(num_prompt_tokens, sum(num_tokens))})  # fmt: skip
        except Exception as error:  # the engine stopped mid-stream
            yield sse_error(error)
        finally:
            abort_all(streams)
        yield SSE_DONE


def _parse_delta(
    parser: ToolCallStreamParser, completion: CompletionOutput
) -> tuple[str, list[dict[str, Any]], str | None]:
    """Content to send, finished calls (streaming delta shape) and the finish_reason to report
    for one delta of a choice whose text may hold tool calls."""
    first_index = parser.num_calls
    text, calls = parser.feed(completion.text)
    if completion.finish_reason is not None:
        rest, more = parser.finish()
        text, calls = text + rest, calls + more
    deltas = [call.to_openai(index=first_index + i) for i, call in enumerate(calls)]
    reason = completion.finish_reason
    if reason is not None:
        reason = tool_finish_reason(reason, parser.num_calls, parser.truncated_call)
    return text, deltas, reason


def _name_max_tokens(request: ChatCompletionRequest, error: Exception) -> OpenAIError:
    """Report a max_tokens error under max_completion_tokens when that is what was sent."""
    bad = error if isinstance(error, OpenAIError) else bad_request(error)  # type: ignore[arg-type]
    if bad.param == "max_tokens" and request.max_completion_tokens is not None:
        bad.param = "max_completion_tokens"
        bad.message = bad.message.replace("max_tokens", "max_completion_tokens", 1)
    return bad
