"""POST /v1/completions: prompt(s) -> engine requests -> a text_completion object or SSE chunks.

A request with P prompts and n completions each has P * n choices; choice ``p * n + i`` is
completion i of prompt p (OpenAI's and vLLM's order). The prompt is counted once per prompt in
``usage.prompt_tokens``, whatever n.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from kaon.engine.async_llm import RequestStream
from kaon.entrypoints.openai.logprobs import LogprobFormatter
from kaon.entrypoints.openai.prompt_limits import check_prompt_chars
from kaon.entrypoints.openai.prompt_scoring import drop_generated, engine_max_tokens
from kaon.entrypoints.openai.protocol import CompletionRequest
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
from kaon.outputs import PositionLogprobs, RequestOutput


@dataclass
class Prompt:
    text: str  # the prompt as text (decoded when given as token ids), for echo
    token_ids: list[int]


class OpenAIServingCompletion:
    """Serves /v1/completions on one AsyncLLM."""

    def __init__(self, context: ServingContext) -> None:
        self.context = context
        self.formatter = LogprobFormatter(context.tokenizer)

    async def create(self, request: CompletionRequest, raw_request: Request) -> Response:
        """Validate, queue and answer one completions request.

        Raises:
            OpenAIError: 400 bad input or over-long prompt, 404 unknown model, 429 overloaded.
        """
        context = self.context
        context.check_model(request.model)
        prompts = await asyncio.to_thread(self._prompts, request.prompt)
        for prompt in prompts:
            context.max_tokens(request.max_tokens, len(prompt.token_ids), "prompt")
        prompt_logprobs = request.prompt_logprobs
        if request.echo and request.logprobs is not None and prompt_logprobs is None:
            prompt_logprobs = request.logprobs  # echoed prompt tokens carry logprobs too
        if request.max_tokens == 0 and request.min_tokens > 0:
            raise bad_request(ValueError("min_tokens must be <= max_tokens, got max_tokens 0"))
        try:
            params = request.sampling_params(
                engine_max_tokens(request.max_tokens), request.logprobs, prompt_logprobs,
                context.generation_defaults,
            )  # fmt: skip
        except ValueError as error:
            raise bad_request(error) from None
        request_id = response_id("cmpl-", raw_request)
        streams = await context.add_requests(request_id, [p.token_ids for p in prompts], params)
        if request.stream:
            body = self._stream(request, request_id, prompts, streams)
            return SSEResponse(body, on_close=lambda: abort_all(streams))
        try:
            result = await cancel_on_disconnect(
                raw_request, self._full(request, request_id, prompts, streams)
            )
        finally:
            abort_all(streams)
        return JSONResponse(result)

    def _prompts(self, prompt: str | list) -> list[Prompt]:
        """Normalise the four prompt forms into (text, token ids) pairs; tokenizes strings."""
        tokenizer = self.context.tokenizer
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        prompts = []
        for item in prompt:
            if isinstance(item, str):
                check_prompt_chars(item, "prompt", tokenizer, self.context.max_model_len)
                token_ids = tokenizer.encode(item) if item else []
                prompts.append(Prompt(item, token_ids))
            else:
                _check_token_ids(item, tokenizer.vocab_size)
                prompts.append(Prompt(tokenizer.decode(item, skip_special_tokens=False), item))
            if not prompts[-1].token_ids:
                raise OpenAIError(400, "prompt: must not be empty", param="prompt")
        return prompts

    async def _full(
        self,
        request: CompletionRequest,
        request_id: str,
        prompts: list[Prompt],
        streams: list[RequestStream],
    ) -> dict[str, Any]:
        n = request.n
        states = [ChoiceState() for _ in range(len(prompts) * n)]
        prompt_logprobs: dict[int, list[PositionLogprobs | None]] = {}
        async for prompt_index, output in _outputs(request, streams):
            if output.prompt_logprobs is not None:
                prompt_logprobs[prompt_index] = output.prompt_logprobs
            for completion in output.outputs:
                states[prompt_index * n + completion.index].add(completion)
        choices = []
        for index, state in enumerate(states):
            prompt = prompts[index // n]
            text, logprobs = state.text, None
            if request.echo:
                text = prompt.text + text
            if request.logprobs is not None:
                logprobs = self._logprobs(
                    request.logprobs, request.echo, prompt, prompt_logprobs.get(index // n),
                    state.token_ids, state.positions,
                )  # fmt: skip
            choices.append(_choice(index, text, logprobs, state.finish_reason, state.stop_reason))
        num_completion_tokens = sum(len(state.token_ids) for state in states)
        num_prompt_tokens = sum(len(prompt.token_ids) for prompt in prompts)
        return {
            "id": request_id,
            "object": "text_completion",
            "created": now(),
            "model": self.context.model_name,
            "choices": choices,
            "usage": usage(num_prompt_tokens, num_completion_tokens),
            "system_fingerprint": None,
        }

    def _logprobs(
        self,
        num_top: int,
        echo: bool,
        prompt: Prompt,
        prompt_logprobs: list[PositionLogprobs | None] | None,
        token_ids: list[int],
        positions: list[PositionLogprobs],
        text_offset: int = 0,
    ) -> dict[str, Any]:
        """Logprobs of the generated tokens, preceded by the prompt's when echoing."""
        if echo:
            echoed = prompt_logprobs or [None] * len(prompt.token_ids)
            token_ids = prompt.token_ids + token_ids
            positions = [*echoed, *positions]  # type: ignore[list-item]
        return self.formatter.completion(token_ids, positions, num_top, text_offset)

    async def _stream(
        self,
        request: CompletionRequest,
        request_id: str,
        prompts: list[Prompt],
        streams: list[RequestStream],
    ) -> AsyncIterator[str]:
        n, created, model = request.n, now(), self.context.model_name
        started: set[int] = set()
        offsets: dict[int, int] = {}  # choice -> characters of text sent (logprobs text_offset)
        num_tokens = [0] * (len(prompts) * n)  # generated tokens per choice

        def chunk(choice: dict[str, Any]) -> str:
            data = {"id": request_id, "object": "text_completion", "created": created}
            data = {**data, "model": model, "choices": [choice]}
            if request.include_continuous_usage:  # vLLM: this choice's tokens so far
                num_prompt = len(prompts[choice["index"] // n].token_ids)
                data["usage"] = usage(num_prompt, num_tokens[choice["index"]])
            elif request.include_usage:
                data["usage"] = None
            return sse(data)

        try:
            async for prompt_index, output in _outputs(request, streams):
                prompt = prompts[prompt_index]
                for completion in output.outputs:
                    index = prompt_index * n + completion.index
                    num_tokens[index] += len(completion.token_ids)
                    text, echo = completion.text, request.echo and index not in started
                    started.add(index)
                    if echo:
                        text = prompt.text + text
                    logprobs = None
                    if request.logprobs is not None and (completion.token_ids or echo):
                        logprobs = self._logprobs(
                            request.logprobs, echo, prompt, output.prompt_logprobs,
                            completion.token_ids, completion.logprobs or [], offsets.get(index, 0),
                        )  # fmt: skip
                    offsets[index] = offsets.get(index, 0) + len(text)
                    if text or logprobs is not None:
                        yield chunk(_choice(index, text, logprobs, None, None))
                    if completion.finish_reason is not None:
                        reason, stop = completion.finish_reason, completion.stop_reason
                        yield chunk(_choice(index, "", None, reason, stop))
            if request.include_usage:
                num_prompt_tokens = sum(len(prompt.token_ids) for prompt in prompts)
                data = {"id": request_id, "object": "text_completion", "created": created}
                yield sse({**data, "model": model, "choices": [],
                           "usage": usage(num_prompt_tokens, sum(num_tokens))})  # fmt: skip
        except Exception as error:  # the engine stopped mid-stream
            yield sse_error(error)
        finally:
            abort_all(streams)
        yield SSE_DONE


def _outputs(
    request: CompletionRequest, streams: list[RequestStream]
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The engine's outputs; a max_tokens 0 request's one generated token is dropped."""
    outputs = merge_streams(streams)
    return drop_generated(outputs) if request.max_tokens == 0 else outputs


def _check_token_ids(token_ids: list[int], vocab_size: int) -> None:
    for token_id in token_ids:
        if not 0 <= token_id < vocab_size:
            raise OpenAIError(
                400, f"prompt token id {token_id} is outside the vocabulary [0, {vocab_size})",
                param="prompt",
            )  # fmt: skip


def _choice(
    index: int,
    text: str,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    stop_reason: int | str | None,
) -> dict[str, Any]:
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }
