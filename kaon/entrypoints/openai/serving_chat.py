"""POST /v1/chat/completions: messages -> the model's chat template -> one engine request ->
a chat.completion object or chat.completion.chunk SSE events.

Stream shape (per choice): a first chunk with ``delta: {"role": "assistant", "content": ""}``,
content chunks, then one final chunk with an empty delta and the finish_reason; then the usage
chunk (``stream_options.include_usage``) and ``data: [DONE]``. With vLLM's
``stream_options.continuous_usage_stats`` every chunk also carries ``usage``: the prompt and
the tokens generated so far for that chunk's choice.
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
        token_ids = await asyncio.to_thread(self.render, request)
        max_tokens = request.requested_max_tokens
        try:
            context.max_tokens(max_tokens, len(token_ids), "messages")
            params = request.sampling_params(
                max_tokens, request.num_logprobs, None, context.generation_defaults
            )
        except (OpenAIError, ValueError) as error:
            raise _name_max_tokens(request, error) from None
        request_id = response_id("chatcmpl-", raw_request)
        streams = await context.add_requests(request_id, [token_ids], params)
        if request.stream:
            body = self._stream(request, request_id, len(token_ids), streams)
            return SSEResponse(body, on_close=lambda: abort_all(streams))
        try:
            result = await cancel_on_disconnect(
                raw_request, self._full(request, request_id, len(token_ids), streams)
            )
        finally:
            abort_all(streams)
        return JSONResponse(result)

    def render(self, request: ChatCompletionRequest) -> list[int]:
        """Prompt token ids of the conversation, as ``LLM.chat`` builds them.

        Raises:
            OpenAIError: 400 naming messages[i] (from the tokenizer's template checks).
        """
        tokenizer = self.context.tokenizer
        try:
            text = tokenizer.apply_chat_template(
                request.message_dicts(), add_generation_prompt=request.add_generation_prompt
            )
        except ValueError as error:
            raise bad_request(error) from None
        check_prompt_chars(text, "messages", tokenizer, self.context.max_model_len)
        return tokenizer.encode(text)

    async def _full(
        self,
        request: ChatCompletionRequest,
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
            choices.append({
                "index": index,
                "message": {"role": "assistant", "content": state.text},
                "logprobs": logprobs,
                "finish_reason": state.finish_reason,
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
                    if completion.text or logprobs is not None:
                        delta = {"content": completion.text}
                        yield chunk(completion.index, delta, logprobs, None, None)
                    if completion.finish_reason is not None:
                        reason, stop = completion.finish_reason, completion.stop_reason
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


def _name_max_tokens(request: ChatCompletionRequest, error: Exception) -> OpenAIError:
    """Report a max_tokens error under max_completion_tokens when that is what was sent."""
    bad = error if isinstance(error, OpenAIError) else bad_request(error)  # type: ignore[arg-type]
    if bad.param == "max_tokens" and request.max_completion_tokens is not None:
        bad.param = "max_completion_tokens"
        bad.message = bad.message.replace("max_tokens", "max_completion_tokens", 1)
    return bad
