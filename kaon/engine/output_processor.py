"""Output processing: EngineCoreOutputs -> detokenized RequestOutputs (and stop-string hits).

A user request with ``n > 1`` runs as ``n`` child requests (``{id}#{index}``) in the scheduler; this
stage joins their completions back into one RequestOutput, finished when every child is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kaon import envs
from kaon.detokenizer import IncrementalDetokenizer
from kaon.outputs import (
    CompletionOutput,
    EngineCoreOutput,
    PositionLogprobs,
    RequestError,
    RequestMetrics,
    RequestOutput,
)
from kaon.sampling_params import SamplingParams


def child_request_id(request_id: str, index: int, n: int) -> str:
    """Scheduler id of completion ``index`` of a user request (the id itself when n == 1)."""
    return request_id if n == 1 else f"{request_id}#{index}"


@dataclass
class CompletionState:
    index: int
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # Delta mode: how much of token_ids / text / logprobs was already sent.
    sent_tokens: int = 0
    sent_text: int = 0
    sent_finish: bool = False


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    completions: list[CompletionState]
    metrics: RequestMetrics
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    queue: object = None  # AsyncLLM's per-request asyncio.Queue, if any

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.completions)


class OutputProcessor:
    """Keeps each user request's detokenizers and builds its RequestOutputs."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.requests: dict[str, RequestState] = {}
        self._child_to_parent: dict[str, tuple[str, int]] = {}
        # User requests whose processing raised in the last process_outputs (see take_failed).
        self._failed: dict[str, Exception] = {}

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        queue: object = None,
    ) -> list[str]:
        """Register a user request; returns the scheduler ids of its ``n`` completions."""
        completions = []
        child_ids = []
        for index in range(params.n):
            detokenizer = None
            if params.detokenize:
                detokenizer = IncrementalDetokenizer(
                    self.tokenizer,
                    prompt_token_ids,
                    skip_special_tokens=params.skip_special_tokens,
                    stop=params.stop,
                    include_stop_str_in_output=params.include_stop_str_in_output,
                )
            state = CompletionState(index, detokenizer)
            if params.logprobs is not None:
                state.logprobs, state.cumulative_logprob = [], 0.0
            completions.append(state)
            child_id = child_request_id(request_id, index, params.n)
            self._child_to_parent[child_id] = (request_id, index)
            child_ids.append(child_id)
        self.requests[request_id] = RequestState(
            request_id, prompt, prompt_token_ids, params, completions,
            RequestMetrics(arrival_time=arrival_time), queue=queue,
        )  # fmt: skip
        return child_ids

    def process_outputs(
        self, outputs: list[EngineCoreOutput]
    ) -> tuple[list[RequestOutput], list[str]]:
        """Returns the RequestOutputs of this step and the child ids a stop string finished.

        An exception while processing one request (detokenizer, stop strings, logprobs) fails
        that request alone: it gets no output here and is listed by ``take_failed``; the caller
        must abort it.
        """
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        stopped: list[str] = []
        for output in outputs:
            parent = self._child_to_parent.get(output.request_id)
            if parent is None or parent[0] in self._failed:
                continue
            state = self.requests[parent[0]]
            completion = state.completions[parent[1]]
            try:
                if self._apply(state, completion, output, now):
                    stopped.append(output.request_id)
            except Exception as error:
                self._failed[state.request_id] = error
                continue
            touched[state.request_id] = state
        results = []
        for state in touched.values():
            if state.request_id in self._failed:
                continue
            try:
                results.append(self._make_output(state))
            except Exception as error:
                self._failed[state.request_id] = error
                continue
            if state.finished:
                self._forget(state)
        return results, stopped

    def take_failed(self) -> dict[str, Exception]:
        """User request ids whose processing raised since the last call, with the error."""
        failed, self._failed = self._failed, {}
        return failed

    def _apply(
        self, state: RequestState, completion: CompletionState, output: EngineCoreOutput, now: float
    ) -> bool:
        """Fold one step into a completion; True when a stop string ended it here.

        Raises:
            RequestError: the scheduler failed the request (``output.error``).
        """
        if output.error is not None:
            raise RequestError(output.error)
        if completion.finish_reason is not None:
            return False
        delta, stop = "", None
        if completion.detokenizer is not None:  # first: it may drop tokens after a stop string
            delta, stop = _detokenize(completion.detokenizer, output)
        metrics = state.metrics
        if metrics.first_token_time is None and output.new_token_ids:
            metrics.first_token_time = now
        if output.new_token_ids:
            metrics.last_token_time = now
            metrics.num_generation_tokens += len(output.new_token_ids)
        if output.new_prompt_logprobs is not None:
            state.prompt_logprobs = output.new_prompt_logprobs
        state.num_cached_tokens = output.num_cached_tokens
        completion.token_ids.extend(output.new_token_ids)
        if state.params.stop and envs.fail_on_stop_string() in state.params.stop:
            raise RuntimeError("injected failure (KAON_TEST_FAIL_ON_STOP)")
        self._add_logprobs(completion, output)
        completion.finish_reason = output.finish_reason
        completion.stop_reason = output.stop_reason
        stop_hit = False
        if completion.detokenizer is not None:
            completion.text += delta
            if stop is not None:
                # The scheduler may have ended it in the same step (eos, length): then no abort.
                stop_hit = completion.finish_reason is None
                completion.finish_reason, completion.stop_reason = "stop", stop
            elif completion.finish_reason is not None:
                completion.text += completion.detokenizer.finish()
        if state.finished:
            metrics.finished_time = now
        return stop_hit

    def _add_logprobs(self, completion: CompletionState, output: EngineCoreOutput) -> None:
        if completion.logprobs is None or not output.new_logprobs:
            return
        for token_id, position in zip(output.new_token_ids, output.new_logprobs, strict=True):
            for candidate_id, logprob in position.items():
                logprob.decoded_token = self.tokenizer.decode(
                    [candidate_id], skip_special_tokens=False
                )
            completion.logprobs.append(position)
            assert completion.cumulative_logprob is not None
            completion.cumulative_logprob += position[token_id].logprob

    def _make_output(self, state: RequestState) -> RequestOutput:
        delta = state.params.output_kind_delta
        completions = []
        for completion in state.completions:
            if delta:
                text = completion.text[completion.sent_text :]
                token_ids = completion.token_ids[completion.sent_tokens :]
                logprobs = (
                    completion.logprobs[completion.sent_tokens :]
                    if completion.logprobs is not None
                    else None
                )
                finish_sent = completion.sent_finish
                if not token_ids and not text and (completion.finish_reason is None or finish_sent):
                    continue
                completion.sent_finish = completion.finish_reason is not None
                completion.sent_text = len(completion.text)
                completion.sent_tokens = len(completion.token_ids)
            else:
                text, token_ids, logprobs = (
                    completion.text,
                    list(completion.token_ids),
                    completion.logprobs,
                )
            completions.append(
                CompletionOutput(
                    index=completion.index,
                    text=text,
                    token_ids=token_ids,
                    cumulative_logprob=completion.cumulative_logprob,
                    logprobs=logprobs,
                    finish_reason=completion.finish_reason,
                    stop_reason=completion.stop_reason,
                )
            )
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=completions,
            finished=state.finished,
            prompt_logprobs=state.prompt_logprobs,
            num_cached_tokens=state.num_cached_tokens,
            metrics=state.metrics,
        )

    def abort_request(self, request_id: str) -> tuple[list[str], RequestOutput | None]:
        """Forget a user request; returns its unfinished child ids and a final 'abort' output."""
        state = self.requests.get(request_id)
        if state is None:
            return [], None
        children = []
        for completion in state.completions:
            if completion.finish_reason is None:
                completion.finish_reason = "abort"
                children.append(child_request_id(request_id, completion.index, state.params.n))
        state.metrics.finished_time = time.monotonic()
        output = self._make_output(state)
        self._forget(state)
        return children, output

    def _forget(self, state: RequestState) -> None:
        del self.requests[state.request_id]
        for index in range(state.params.n):
            self._child_to_parent.pop(
                child_request_id(state.request_id, index, state.params.n), None
            )

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)


def _detokenize(detokenizer, output: EngineCoreOutput) -> tuple[str, str | None]:
    """Text delta and matched stop string of a step's tokens. Several tokens in one step
    (speculative decoding) are fed one at a time, and those after the token that completes a stop
    string are dropped from ``output``, as decoding them one per step would."""
    if len(output.new_token_ids) <= 1:
        return detokenizer.update(output.new_token_ids)
    delta = ""
    for count, token_id in enumerate(output.new_token_ids, start=1):
        piece, stop = detokenizer.update([token_id])
        delta += piece
        if stop is not None:
            del output.new_token_ids[count:]
            if output.new_logprobs is not None:
                del output.new_logprobs[count:]
            return delta, stop
    return delta, None
