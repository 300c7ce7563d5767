"""Stage contracts: the dataclasses the pipeline stages hand to each other.

    Scheduler --SchedulerOutput--> ModelRunner --ModelRunnerOutput--> Scheduler.update_from_output
        --EngineCoreOutput--> detokenizer / output processor --RequestOutput--> user

Nothing here imports torch, so ``kaon/core`` can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kaon.sampling_params import SamplingParams

# ---------------------------------------------------------------- scheduler -> model runner


@dataclass
class NewRequestData:
    """Sent once, the first step a request is scheduled: what the runner keeps per request."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams


@dataclass
class ScheduledRequest:
    """One request's work in this step.

    ``token_ids`` are the tokens at positions ``[num_computed_tokens, num_computed_tokens +
    len(token_ids))``: a prefill chunk, a recompute after preemption, or one decode token.
    ``block_ids`` is the request's whole block table after this step's allocation.
    """

    request_id: str
    token_ids: list[int]
    num_computed_tokens: int
    block_ids: list[int]
    sample: bool  # the chunk reaches the last known token, so a new token is sampled
    # Speculative decoding: the draft tokens at the end of ``token_ids`` (verified this step).
    spec_token_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerOutput:
    """Everything the model runner needs for one forward pass."""

    scheduled_requests: list[ScheduledRequest]
    new_requests: list[NewRequestData]
    num_scheduled_tokens: int
    finished_req_ids: set[str] = field(default_factory=set)  # runner drops their state
    # Structured outputs (filled by the engine after scheduling): request id -> row of
    # grammar_bitmask, a numpy int32 [num_rows, cdiv(vocab_size, 32)] array whose bit i of a row
    # is set when token i is allowed (or a concurrent.futures.Future of it, being filled during
    # the forward pass). Only requests that sample this step and have a grammar.
    structured_output_request_ids: dict[str, int] = field(default_factory=dict)
    grammar_bitmask: Any = None

    @property
    def is_empty(self) -> bool:
        return not self.scheduled_requests


# ---------------------------------------------------------------- model runner -> scheduler


@dataclass
class Logprob:
    """Log-probability of one token at one position (natural log), its rank (1 = most likely)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One position: token id -> Logprob; holds the chosen token and the top-k alternatives.
PositionLogprobs = dict[int, Logprob]


@dataclass
class ModelRunnerOutput:
    """Results of one forward pass, for the requests that sampled a token."""

    req_ids: list[str]
    sampled_token_ids: list[int]
    logprobs: dict[str, PositionLogprobs] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[PositionLogprobs | None]] = field(default_factory=dict)
    # Speculative decoding: accepted drafts, emitted before the request's sampled token, and
    # their logprobs (when asked for).
    accepted_draft_token_ids: dict[str, list[int]] = field(default_factory=dict)
    draft_logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)


# ---------------------------------------------------------------- scheduler -> output processing


@dataclass
class EngineCoreOutput:
    """What changed for one request in one step."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    new_logprobs: list[PositionLogprobs] | None = None
    new_prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    # Set when the request failed in the scheduler (its grammar could not go on): the output
    # processor fails the request with ``RequestError`` instead of reporting this step.
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class RequestError(RuntimeError):
    """One request could not be completed as asked (e.g. its structured-output grammar could not
    go on); it is aborted alone and its caller gets this message (HTTP 500)."""


# ---------------------------------------------------------------- user-facing


@dataclass
class RequestMetrics:
    """Timestamps in seconds (time.monotonic) and the latencies derived from them."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_generation_tokens: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        """TTFT in seconds: arrival to the first generated token."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def time_per_output_token(self) -> float | None:
        """TPOT in seconds: mean gap between generated tokens after the first."""
        if self.first_token_time is None or self.last_token_time is None:
            return None
        if self.num_generation_tokens < 2:
            return None
        return (self.last_token_time - self.first_token_time) / (self.num_generation_tokens - 1)

    @property
    def e2e_latency(self) -> float | None:
        """End-to-end latency in seconds: arrival to finish."""
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class CompletionOutput:
    """One of the ``n`` completions of a request.

    ``text`` and ``token_ids`` are cumulative, unless the request asked for deltas (streaming),
    in which case they hold only what is new since the previous RequestOutput.
    """

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """What ``LLM.generate`` returns and ``AsyncLLM.generate`` yields, per request."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
