"""Drafter: the scheduler's side of speculative decoding (plain Python, no torch).

It owns the proposer, decides how many tokens each request may draft this step, and keeps the
acceptance statistics:

    batch switch    drafts only while the step's decode rows plus draft rows fit
                    ``max_num_verify_rows`` (beyond that a CPU forward is compute-bound and each
                    rejected draft row costs throughput)
    per request     after a draft with nothing accepted, skip 2**misses - 1 steps (at most
                    ``max_backoff_steps``); the draft length follows the request's recent
                    per-token acceptance rate alpha (a decayed count of accepted draft tokens
                    over accepted + rejected ones): the longest L <= k with
                    alpha ** L >= ``draft_acceptance_threshold`` (at least 1), so drafts
                    grow to k on text the proposer predicts well and shrink where it does not
    budget          never more drafts than max_tokens (or max_model_len) leaves after the bonus
                    token, so a step never overshoots
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kaon.request import Request
from kaon.spec_decode.config import SpeculativeConfig
from kaon.spec_decode.ngram_proposer import NgramProposer
from kaon.spec_decode.suffix_proposer import SuffixProposer


@dataclass
class SpecDecodeStats:
    """Cumulative counters (vLLM's spec_decode metrics). Positions are 0-based draft indices."""

    num_drafts: int = 0  # verification steps that carried at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens emitted per draft step: 1 (bonus/corrected) + accepted drafts; 0 if none."""
        if not self.num_drafts:
            return 0.0
        return 1.0 + self.num_accepted_tokens / self.num_drafts


# Acceptance-rate estimate: every verification's counts are added to a decayed sum (weight
# ACCEPTANCE_DECAY ** age, about the last five verifications), starting from a prior of
# PRIOR_TRIALS draft tokens with an acceptance rate of PRIOR_RATE.
ACCEPTANCE_DECAY = 0.8
PRIOR_TRIALS = 2.0
PRIOR_RATE = 0.8


@dataclass
class _RequestState:
    num_misses: int = 0  # consecutive drafts with nothing accepted
    skip_steps: int = 0  # steps left without drafting
    accepted: float = PRIOR_TRIALS * PRIOR_RATE  # decayed accepted draft tokens
    trials: float = PRIOR_TRIALS  # decayed accepted + rejected draft tokens

    @property
    def acceptance_rate(self) -> float:
        """Estimated chance that the next draft token is accepted (alpha)."""
        return self.accepted / self.trials

    def update(self, num_draft_tokens: int, num_accepted: int) -> None:
        """Count ``num_accepted`` accepted tokens and, when the draft stopped early, the one
        rejected token (the tokens after it were never judged)."""
        rejected = 1 if num_accepted < num_draft_tokens else 0
        self.accepted = self.accepted * ACCEPTANCE_DECAY + num_accepted
        self.trials = self.trials * ACCEPTANCE_DECAY + num_accepted + rejected


def draft_length(acceptance_rate: float, threshold: float, max_length: int) -> int:
    """The longest L in 1 .. max_length with acceptance_rate ** L >= threshold (1 if none):
    position L of a draft is accepted with probability about acceptance_rate ** L."""
    if acceptance_rate >= 1.0 or threshold <= 0.0:
        return max_length
    if acceptance_rate <= 0.0:
        return 1
    length = math.floor(math.log(threshold) / math.log(acceptance_rate) + 1e-9)
    return max(1, min(max_length, length))


class Drafter:
    """Proposes draft tokens for decoding requests; see the module docstring."""

    def __init__(self, config: SpeculativeConfig, max_model_len: int) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self.stats = SpecDecodeStats(
            num_accepted_tokens_per_pos=[0] * config.num_speculative_tokens
        )
        self._states: dict[str, _RequestState] = {}
        self._ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
        self._suffix = None
        if config.method == "suffix":
            self._suffix = SuffixProposer(
                config.prompt_lookup_min, config.prompt_lookup_max,
                config.suffix_cache_max_requests,
            )  # fmt: skip

    def row_budget(self, num_decode_rows: int) -> int:
        """Draft tokens the whole step may carry when ``num_decode_rows`` requests decode."""
        return max(0, self.config.max_num_verify_rows - num_decode_rows)

    def propose(self, request: Request, max_num_tokens: int) -> list[int]:
        """Draft tokens after ``request``'s last token, at most ``max_num_tokens`` (and the
        request's own caps); empty while it backs off or when nothing matches."""
        state = self._states.setdefault(request.request_id, _RequestState())
        # Grammar-constrained requests (structured outputs, where present) are not drafted for:
        # their sampler mask would have to advance through each draft position.
        if getattr(request.sampling_params, "structured_outputs", None) is not None:
            return []
        if state.skip_steps > 0:
            state.skip_steps -= 1
            return []
        length = draft_length(
            state.acceptance_rate,
            self.config.draft_acceptance_threshold,
            self.config.num_speculative_tokens,
        )
        limit = min(max_num_tokens, length, self._room(request))
        if limit < 1:
            return []
        if self._suffix is not None:
            return self._suffix.propose(request.request_id, request.all_token_ids, limit)
        return self._ngram.propose(request.all_token_ids, limit)

    def _room(self, request: Request) -> int:
        """Drafts that still leave room for the bonus token within max_tokens/max_model_len."""
        room = self.max_model_len - request.num_tokens - 1
        if request.max_tokens is not None:
            room = min(room, request.max_tokens - request.num_output_tokens - 1)
        return room

    def record(self, request_id: str, num_draft_tokens: int, num_accepted: int) -> None:
        """Account one verification of ``num_draft_tokens`` drafts with ``num_accepted`` kept."""
        if num_draft_tokens < 1:
            return
        stats = self.stats
        stats.num_drafts += 1
        stats.num_draft_tokens += num_draft_tokens
        stats.num_accepted_tokens += num_accepted
        for position in range(num_accepted):
            stats.num_accepted_tokens_per_pos[position] += 1
        state = self._states.get(request_id)
        if state is None:
            return
        state.update(num_draft_tokens, num_accepted)
        if num_accepted == 0:
            state.num_misses += 1
            state.skip_steps = min(2**state.num_misses - 1, self.config.max_backoff_steps)
        else:
            state.num_misses = 0

    def finish(self, request: Request) -> None:
        """Forget a finished request (its output feeds suffix decoding's shared index)."""
        self._states.pop(request.request_id, None)
        if self._suffix is not None:
            self._suffix.finish(request.request_id, request.output_token_ids)
