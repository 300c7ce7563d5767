"""Figures of one load level of ``kaon bench serve``: throughput, goodput, latency percentiles.

Definitions follow vLLM's benchmark_serving and the DistServe paper (goodput, Zhong et al., 2024,
"DistServe: Disaggregating Prefill and Decoding for Goodput-optimized LLM Serving"):

- request throughput = successful requests / duration (requests/s)
- output throughput = output tokens of successful requests / duration (tokens/s)
- goodput = successful requests that meet every given SLO / duration (requests/s)
- TTFT, TPOT, ITL and end-to-end latency: per request, in seconds; summarised as mean and
  p50/p90/p99 (linear interpolation, as numpy.percentile).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kaon.benchmarks.common import summarize


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in seconds; None leaves that one unchecked."""

    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    def met(self, ttft: float | None, tpot: float | None, e2e: float | None) -> bool:
        """Whether one successful request met every set objective.

        A request with one output token has no TPOT; a TPOT objective counts it as met.
        """
        if self.tpot is not None and tpot is not None and tpot > self.tpot:
            return False
        for limit, value in ((self.ttft, ttft), (self.e2e, e2e)):
            if limit is not None and (value is None or value > limit):
                return False
        return True


def goodput(
    requests: Sequence[dict[str, Any]], slo: Slo, duration: float
) -> tuple[int, float | None]:
    """(requests meeting every SLO, those per second); None rate when no SLO is set.

    Each request is a dict with "success", "ttft", "tpot" and "e2e" (seconds).

    Raises:
        ValueError: for a duration <= 0.
    """
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    good = sum(1 for r in requests if r["success"] and slo.met(r["ttft"], r["tpot"], r["e2e"]))
    if slo.ttft is None and slo.tpot is None and slo.e2e is None:
        return good, None
    return good, good / duration


def _series(values: Sequence[float | None]) -> dict[str, float] | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    summary = summarize(present)
    summary["p50"] = summary.pop("median")
    return summary


def level_figures(requests: Sequence[dict[str, Any]], duration: float, slo: Slo) -> dict[str, Any]:
    """Every figure of one level from its per-request records (``RequestResult.as_json``).

    Raises:
        ValueError: for a duration <= 0.
    """
    done = [r for r in requests if r["success"]]
    num_output = sum(r["output_tokens"] or 0 for r in done)
    num_prompt = sum(r["prompt_tokens"] or 0 for r in done)
    num_good, goodput_rate = goodput(requests, slo, duration)
    sources = sorted({r["output_tokens_source"] for r in done if r["output_tokens_source"]})
    return {
        "duration_s": duration,
        "num_requests": len(requests),
        "num_completed": len(done),
        "num_failed": len(requests) - len(done),
        "num_prompt_tokens": num_prompt,
        "num_output_tokens": num_output,
        "output_tokens_source": ",".join(sources) or None,
        "requests_per_s": len(done) / duration,
        "output_tokens_per_s": num_output / duration,
        "num_good": num_good,
        "goodput_requests_per_s": goodput_rate,
        "ttft_s": _series([r["ttft"] for r in done]),
        "tpot_s": _series([r["tpot"] for r in done]),
        "itl_s": _series([gap for r in done for gap in r["itl"]]),
        "e2e_s": _series([r["e2e"] for r in done]),
    }
