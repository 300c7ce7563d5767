"""Scheduler: continuous batching with chunked prefill, prefix caching and preemption.

Every step the scheduler hands out a token budget (``max_num_batched_tokens``) the way vLLM V1
does, with no separate prefill and decode phases: each request just has tokens whose KV is not yet
computed (``num_tokens - num_computed_tokens``): the whole prompt when new, one token when
decoding, everything again after a preemption.

    1. running requests, oldest first: schedule their missing tokens (clipped to the budget);
       when blocks run out, preempt the newest running request (its KV is dropped and recomputed
       later) until the older one fits.
    2. waiting requests, FCFS, while the budget, ``max_num_seqs`` and free blocks allow; a prompt
       longer than the budget is prefilled in chunks over several steps.

The policy is FCFS: a waiting request never overtakes an older one.

With speculative decoding (a ``drafter``, kaon/spec_decode), a decoding request may also get draft
tokens (``Request.spec_token_ids``) and slots for them; ``update_from_output`` appends the
accepted ones, rolls ``num_computed_tokens`` back over the rejected ones and frees blocks that held
only those.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kaon.core.kv_cache_manager import KVCacheManager, cdiv
from kaon.outputs import (
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    ScheduledRequest,
    SchedulerOutput,
)
from kaon.request import Request, RequestStatus

if TYPE_CHECKING:
    from kaon.spec_decode.drafter import Drafter, SpecDecodeStats


@dataclass
class SchedulerStats:
    """Gauges for metrics and tests."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of KV cache blocks held by requests
    prefix_cache_hit_rate: float
    num_preemptions: int
    spec_decode: SpecDecodeStats | None = None  # cumulative draft/acceptance counts, or None


class Scheduler:
    """Decides, every step, which requests run and how many tokens each computes."""

    def __init__(
        self,
        kv_cache_manager: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
        drafter: Drafter | None = None,
    ) -> None:
        self.kv_cache_manager = kv_cache_manager
        self.block_size = kv_cache_manager.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()  # sent to the runner with the next step
        self._seen_by_runner: set[str] = set()
        self.num_preemptions = 0
        self.drafter = drafter  # speculative decoding (kaon/spec_decode), None = off

    # ------------------------------------------------------------------ admission

    def add_request(self, request: Request) -> None:
        """Queue a request (FCFS).

        Raises:
            ValueError: naming ``prompt`` if the prompt cannot fit max_model_len or the whole KV
                cache (it could never run).
        """
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        if request.num_tokens >= self.max_model_len:
            raise ValueError(
                f"prompt is {request.num_tokens} tokens; max_model_len is {self.max_model_len}, "
                "which must leave room for at least one generated token"
            )
        max_tokens_needed = request.num_tokens + 1
        if cdiv(max_tokens_needed, self.block_size) > self.kv_cache_manager.block_pool.num_blocks:
            raise ValueError(
                f"prompt is {request.num_tokens} tokens but the whole KV cache holds only "
                f"{self.kv_cache_manager.block_pool.num_blocks * self.block_size} tokens"
            )
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    # ------------------------------------------------------------------ schedule

    def schedule(self) -> SchedulerOutput:
        """Pick this step's work. Advances each scheduled request's ``num_computed_tokens``."""
        token_budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        token_budget, preempted = self._schedule_running(scheduled, token_budget)
        if not preempted:
            self._schedule_waiting(scheduled, token_budget)
        return self._build_output(scheduled)

    def _schedule_running(
        self, scheduled: list[tuple[Request, int]], token_budget: int
    ) -> tuple[int, bool]:
        preempted = False
        index = 0
        draft_budget = self._draft_budget()
        while index < len(self.running) and token_budget > 0:
            request = self.running[index]
            num_new_tokens = min(request.num_tokens - request.num_computed_tokens, token_budget)
            draft = self._propose(request, num_new_tokens, min(draft_budget, token_budget - 1))
            while True:
                allocated = self._allocate(request, num_new_tokens, draft)
                if allocated is not None:
                    request.spec_token_ids = allocated
                    draft_budget -= len(allocated)
                    num_new_tokens += len(allocated)
                    scheduled.append((request, num_new_tokens))
                    token_budget -= num_new_tokens
                    index += 1
                    break
                # Out of blocks: preempt the newest running request, maybe this one.
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
        return token_budget, preempted

    def _allocate(
        self, request: Request, num_new_tokens: int, draft: list[int]
    ) -> list[int] | None:
        """Slots for the tokens and, if they fit, the drafts. Returns the drafts kept (maybe
        none), or None when even the tokens do not fit."""
        manager = self.kv_cache_manager
        if draft and manager.allocate_slots(request, num_new_tokens + len(draft)) is not None:
            return draft
        if manager.allocate_slots(request, num_new_tokens) is not None:
            return []
        return None

    def _draft_budget(self) -> int:
        """Draft tokens this step may carry in all (0 without speculative decoding)."""
        if self.drafter is None:
            return 0
        num_decodes = sum(1 for r in self.running if r.num_tokens - r.num_computed_tokens == 1)
        return self.drafter.row_budget(num_decodes)

    def _propose(self, request: Request, num_new_tokens: int, max_num_drafts: int) -> list[int]:
        """Draft tokens for a decoding request (one token to compute), else none."""
        if self.drafter is None or max_num_drafts < 1 or num_new_tokens != 1:
            return []
        if request.num_tokens - request.num_computed_tokens != 1:
            return []
        return self.drafter.propose(request, max_num_drafts)

    def _schedule_waiting(self, scheduled: list[tuple[Request, int]], token_budget: int) -> None:
        while self.waiting and token_budget > 0 and len(self.running) < self.max_num_seqs:
            request = self._first_ready_waiting()
            if request is None:
                break  # every waiting request's grammar is still compiling
            computed_blocks: list = []
            if request.num_computed_tokens == 0:
                computed_blocks, num_hit_tokens = self.kv_cache_manager.get_computed_blocks(request)
                if request.num_cached_tokens < 0:
                    request.num_cached_tokens = num_hit_tokens
            else:
                num_hit_tokens = 0
            num_new_tokens = request.num_tokens - num_hit_tokens
            if num_new_tokens > token_budget and not self.enable_chunked_prefill:
                break
            num_new_tokens = min(num_new_tokens, token_budget)
            request.num_computed_tokens = num_hit_tokens
            if (
                self.kv_cache_manager.allocate_slots(request, num_new_tokens, computed_blocks)
                is None
            ):
                request.num_computed_tokens = 0
                break
            self.waiting.remove(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append((request, num_new_tokens))
            token_budget -= num_new_tokens

    def _first_ready_waiting(self) -> Request | None:
        """The oldest waiting request that can run: one whose grammar is still compiling waits
        (it keeps its place in line) while the requests behind it go ahead."""
        for request in self.waiting:
            structured = request.structured_output_request
            if structured is None or structured.is_ready():
                return request
        return None

    def _preempt(self, request: Request) -> None:
        """Drop a running request's KV (recomputed later) and put it first in line."""
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _build_output(self, scheduled: list[tuple[Request, int]]) -> SchedulerOutput:
        scheduled_requests = []
        new_requests = []
        for request, num_new_tokens in scheduled:
            if request.request_id not in self._seen_by_runner:
                self._seen_by_runner.add(request.request_id)
                new_requests.append(
                    NewRequestData(
                        request.request_id, request.prompt_token_ids, request.sampling_params
                    )
                )
            start = request.num_computed_tokens
            end = start + num_new_tokens
            real_end = end - len(request.spec_token_ids)  # drafts follow the real tokens
            scheduled_requests.append(
                ScheduledRequest(
                    request_id=request.request_id,
                    token_ids=request.all_token_ids[start:real_end] + request.spec_token_ids,
                    num_computed_tokens=start,
                    block_ids=self.kv_cache_manager.get_block_ids(request.request_id),
                    sample=real_end == request.num_tokens,
                    spec_token_ids=list(request.spec_token_ids),
                )
            )
            request.num_computed_tokens = end
        output = SchedulerOutput(
            scheduled_requests=scheduled_requests,
            new_requests=new_requests,
            num_scheduled_tokens=sum(n for _, n in scheduled),
            finished_req_ids=self.finished_req_ids,
        )
        self.finished_req_ids = set()
        return output

    # ------------------------------------------------------------------ update

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        """Append sampled tokens (accepted drafts first), apply stop conditions, roll back
        rejected drafts, free finished requests' blocks."""
        outputs = []
        for request_id, token_id in zip(
            runner_output.req_ids, runner_output.sampled_token_ids, strict=True
        ):
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue  # aborted while the step ran
            accepted = runner_output.accepted_draft_token_ids.get(request_id, [])
            self._finish_drafts(request, len(accepted))
            new_token_ids = accepted + [token_id]
            for count, new_token_id in enumerate(new_token_ids, start=1):
                request.append_output_token_ids([new_token_id])
                self._check_stop(request, new_token_id)
                self._advance_grammar(request, new_token_id)
                if request.is_finished:
                    del new_token_ids[count:]  # tokens after a stop are dropped
                    break
            prompt_logprobs = runner_output.prompt_logprobs.get(request_id)
            logprobs = runner_output.logprobs.get(request_id)
            new_logprobs = None
            if logprobs is not None:
                new_logprobs = runner_output.draft_logprobs.get(request_id, []) + [logprobs]
                new_logprobs = new_logprobs[: len(new_token_ids)]
            outputs.append(
                EngineCoreOutput(
                    request_id=request_id,
                    new_token_ids=new_token_ids,
                    finish_reason=request.status.finish_reason,
                    stop_reason=request.stop_reason,
                    new_logprobs=new_logprobs,
                    new_prompt_logprobs=prompt_logprobs,
                    num_cached_tokens=max(request.num_cached_tokens, 0),
                    error=_grammar_error(request),
                )
            )
            if request.is_finished:
                self._free_finished(request)
        return outputs

    def _finish_drafts(self, request: Request, num_accepted: int) -> None:
        """Forget the rejected drafts' KV: roll num_computed_tokens back over them and free
        the blocks that only held them (they were never hashed for the prefix cache)."""
        num_drafts = len(request.spec_token_ids)
        if not num_drafts:
            return
        request.spec_token_ids = []
        request.num_computed_tokens -= num_drafts - num_accepted
        self.kv_cache_manager.free_tail_blocks(request)
        if self.drafter is not None:
            self.drafter.record(request.request_id, num_drafts, num_accepted)

    def _check_stop(self, request: Request, token_id: int) -> None:
        params = request.sampling_params
        if request.num_output_tokens > params.min_tokens:  # eos / stop ids allowed after min_tokens
            if not params.ignore_eos and token_id in request.eos_token_ids:
                request.status = RequestStatus.FINISHED_STOPPED
                return
            if token_id in params.stop_token_ids:
                request.status = RequestStatus.FINISHED_STOPPED
                request.stop_reason = token_id
                return
        max_tokens = request.max_tokens
        if (max_tokens is not None and request.num_output_tokens >= max_tokens) or (
            request.num_tokens >= self.max_model_len
        ):
            request.status = RequestStatus.FINISHED_LENGTH

    @staticmethod
    def _advance_grammar(request: Request, token_id: int) -> None:
        """Feed the sampled token to the request's grammar; a grammar that is complete and allows
        nothing more (not even more whitespace) ends the request with finish_reason "stop"."""
        structured = request.structured_output_request
        if structured is None:
            return
        done = structured.accept_token(token_id)
        if done and not request.is_finished:
            request.status = RequestStatus.FINISHED_STOPPED

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        """End requests from outside (abort, stop string); unknown or finished ids are ignored."""
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            request.status = status
            self._free_finished(request)

    def _free_finished(self, request: Request) -> None:
        if request in self.running:
            self.running.remove(request)
        self.kv_cache_manager.free(request)
        request.spec_token_ids = []
        if self.drafter is not None:
            self.drafter.finish(request)
        del self.requests[request.request_id]
        if request.request_id in self._seen_by_runner:
            self._seen_by_runner.discard(request.request_id)
            self.finished_req_ids.add(request.request_id)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=self.kv_cache_manager.usage(),
            prefix_cache_hit_rate=self.kv_cache_manager.prefix_cache_hit_rate(),
            num_preemptions=self.num_preemptions,
            spec_decode=self.drafter.stats if self.drafter is not None else None,
        )


def _grammar_error(request: Request) -> str | None:
    """Why the request's grammar could not go on, or None (no grammar, or no error)."""
    structured = request.structured_output_request
    return None if structured is None else structured.error
