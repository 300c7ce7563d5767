"""Request: the scheduler's per-request state (plain Python, no torch)."""

from __future__ import annotations

import enum
import time
from typing import Protocol

from kaon.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    """Life cycle: WAITING -> RUNNING -> (PREEMPTED -> RUNNING)* -> FINISHED_*."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_STOPPED = enum.auto()  # eos, stop token id or stop string
    FINISHED_LENGTH = enum.auto()  # max_tokens or max_model_len
    FINISHED_ABORTED = enum.auto()  # client went away or engine.abort_request

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        """OpenAI's finish_reason string, or None while the request runs."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class StructuredOutputState(Protocol):
    """What the scheduler needs from a request's grammar matcher (kaon.structured_outputs)."""

    def is_ready(self) -> bool:
        """False while the grammar compiles: the request then waits, others go ahead."""
        ...

    # Set when the grammar cannot go on (compile failure, rejected token): the request fails.
    error: str | None

    def accept_token(self, token_id: int) -> bool:
        """Advance by a sampled token; True when the grammar is complete (finish "stop") or
        cannot go on (``error`` set)."""
        ...


class Request:
    """One sequence being generated.

    Token counters (all in tokens):
        num_prompt_tokens     length of the prompt
        num_tokens            prompt + generated tokens
        num_computed_tokens   tokens whose KV is in the cache (reset to 0 on preemption)
        num_cached_tokens     prefix-cache hit at the first admission
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_ids: set[int] | frozenset[int] = frozenset(),
        arrival_time: float | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_ids = frozenset(eos_token_ids)
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        # Effective token budget: the user's max_tokens clipped to what the context leaves.
        self.max_tokens = max_tokens if max_tokens is not None else sampling_params.max_tokens
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = -1
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None
        # Hashes of this request's full blocks, computed lazily by the KV cache manager.
        self.block_hashes: list[int] = []
        # Speculative decoding: draft tokens scheduled after the last real token this step.
        self.spec_token_ids: list[int] = []
        # Grammar matcher when sampling_params.structured_outputs is set (set by the engine).
        self.structured_output_request: StructuredOutputState | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token_ids(self, token_ids: list[int]) -> None:
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, "
            f"tokens={self.num_tokens}, computed={self.num_computed_tokens})"
        )
