"""SpeculativeConfig: the ``speculative_config`` engine option (as vLLM's), validated."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

METHODS = ("ngram", "suffix")


@dataclass
class SpeculativeConfig:
    """Which proposer drafts tokens, how many, and when drafting turns itself off.

    Built from a dict (``LLM(speculative_config={...})``) or a JSON object string
    (``kaon serve --speculative-config '{"method": "ngram", "num_speculative_tokens": 8}'``).
    """

    method: str = "ngram"  # "ngram" (prompt lookup) or "suffix" (suffix decoding)
    # Most draft tokens per request per step (k). 8: on the default model's Q4_1 blocks k = 4
    # reached 1.93x on input-grounded text and k = 8 2.17x, with no loss on free writing
    # (BENCHMARKS.md); the adaptive length drafts fewer when acceptance is lower.
    num_speculative_tokens: int = 8
    prompt_lookup_min: int = 2  # shortest matched suffix, in tokens
    prompt_lookup_max: int = 4  # longest matched suffix, in tokens (tried first)
    # Suffix decoding: how many finished responses feed the shared suffix index.
    suffix_cache_max_requests: int = 64
    # Batch-level switch: drafts are added while decode rows + draft rows of the step stay within
    # this many (a CPU forward is bound by weight reads up to about this many rows; beyond it
    # extra rows cost compute and drafting would cost throughput).
    max_num_verify_rows: int = 8
    # Per-request back-off: after a draft with no accepted token, skip drafting for
    # 2 ** consecutive_misses - 1 steps, at most this many.
    max_backoff_steps: int = 16
    # Per-request draft length: position L of a draft is proposed only while the estimated
    # chance that it is accepted, alpha ** L (alpha: the request's recent per-token acceptance
    # rate), is at least this. An extra verify row costs a fraction of a decode step; it pays
    # off when its expected accepted tokens exceed that fraction.
    draft_acceptance_threshold: float = 0.3

    @classmethod
    def parse(cls, value: object) -> SpeculativeConfig | None:
        """A SpeculativeConfig from a dict, a JSON string, an instance, or None (off).

        Raises:
            ValueError: naming the bad field (unknown field, unknown method, k < 1,
                prompt_lookup_min > prompt_lookup_max, non-JSON text).
        """
        if value is None or isinstance(value, SpeculativeConfig):
            if value is not None:
                value.validate()
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"speculative_config must be a JSON object: {error}") from None
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be an object, got {value!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in value:
            if key not in known:
                raise ValueError(
                    f"speculative_config.{key} is not a speculative decoding option; "
                    f"known: {sorted(known)}"
                )
        config = cls(**value)
        config.validate()
        return config

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"speculative_config.method must be one of {list(METHODS)}, got {self.method!r}"
            )
        for name in (
            "num_speculative_tokens",
            "prompt_lookup_min",
            "prompt_lookup_max",
            "suffix_cache_max_requests",
            "max_num_verify_rows",
        ):
            _positive_int(name, getattr(self, name))
        if isinstance(self.max_backoff_steps, bool) or not isinstance(self.max_backoff_steps, int):
            raise ValueError("speculative_config.max_backoff_steps must be an integer")
        if self.max_backoff_steps < 0:
            raise ValueError("speculative_config.max_backoff_steps must be >= 0")
        threshold = self.draft_acceptance_threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0 <= threshold < 1
        ):
            raise ValueError(
                "speculative_config.draft_acceptance_threshold must be a number in [0, 1), "
                f"got {threshold!r}"
            )
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"speculative_config.prompt_lookup_min ({self.prompt_lookup_min}) must not exceed "
                f"speculative_config.prompt_lookup_max ({self.prompt_lookup_max})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"speculative_config.{name} must be an integer >= 1, got {value!r}")
