"""Prometheus metrics of a kaon server (prometheus-client), named like vLLM's with a ``kaon:``
prefix so dashboards carry over.

Each server owns its own CollectorRegistry (no global state), served at GET /metrics.
Engine gauges are refreshed by the engine thread after every step; request metrics are recorded
when a request finishes (stop, length or abort).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kaon.core.scheduler import SchedulerStats
from kaon.outputs import RequestOutput

__all__ = ["CONTENT_TYPE", "PrometheusStatLogger"]

# Latency buckets in seconds: TTFT and end-to-end span ms to minutes on CPU; TPOT is per token.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class PrometheusStatLogger:
    """All metrics of one server.

    ``record_stats`` and ``record_finished`` are called from the engine thread,
    ``record_http`` from the event loop; prometheus-client metrics are thread-safe.
    """

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        reg = self.registry
        self.http_requests = Counter(
            "kaon:http_requests", "HTTP requests by route and status code",
            ["route", "status"], registry=reg,
        )  # fmt: skip
        self.request_success = Counter(
            "kaon:request_success", "Finished requests by finish reason (stop, length, abort)",
            ["model_name", "finished_reason"], registry=reg,
        )  # fmt: skip
        self.prompt_tokens = _counter("kaon:prompt_tokens", "Prompt tokens processed", reg, labels)
        self.generation_tokens = _counter("kaon:generation_tokens", "Generated tokens", reg, labels)
        self.ttft = _histogram(
            "kaon:time_to_first_token_seconds",
            "Time to first token (s)",
            _TTFT_BUCKETS,
            reg,
            labels,
        )
        self.tpot = _histogram(
            "kaon:time_per_output_token_seconds", "Time per output token after the first (s)",
            _TPOT_BUCKETS, reg, labels,
        )  # fmt: skip
        self.e2e = _histogram(
            "kaon:e2e_request_latency_seconds", "Arrival to finish (s)", _E2E_BUCKETS, reg, labels
        )
        self.running = _gauge(
            "kaon:num_requests_running", "Requests in the running batch", reg, labels
        )
        self.waiting = _gauge("kaon:num_requests_waiting", "Requests waiting to run", reg, labels)
        self.kv_cache_usage = _gauge(
            "kaon:kv_cache_usage_perc",
            "Fraction of KV cache blocks held by requests (0-1)",
            reg,
            labels,
        )
        self.prefix_cache_hit_rate = _gauge(
            "kaon:prefix_cache_hit_rate",
            "Fraction of looked-up prompt blocks found cached",
            reg,
            labels,
        )
        self.preemptions = _counter("kaon:num_preemptions", "Preempted requests", reg, labels)
        self._model_name = model_name
        self._num_preemptions = 0
        self.spec_drafts = _counter(
            "kaon:spec_decode_num_drafts", "Speculative decoding: verified drafts", reg, labels
        )
        self.spec_draft_tokens = _counter(
            "kaon:spec_decode_num_draft_tokens", "Speculative decoding: draft tokens", reg, labels
        )
        self.spec_accepted_tokens = _counter(
            "kaon:spec_decode_num_accepted_tokens", "Speculative decoding: accepted draft tokens",
            reg, labels,
        )  # fmt: skip
        self.spec_accepted_per_pos = Counter(
            "kaon:spec_decode_num_accepted_tokens_per_pos",
            "Speculative decoding: accepted draft tokens by position in the draft (0-based)",
            ["model_name", "position"], registry=reg,
        )  # fmt: skip
        self._spec_seen: tuple[int, int, int, list[int]] = (0, 0, 0, [])

    def record_stats(self, stats: SchedulerStats) -> None:
        """Refresh the engine gauges (engine thread)."""
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_cache_usage.set(stats.kv_cache_usage)
        self.prefix_cache_hit_rate.set(stats.prefix_cache_hit_rate)
        if stats.num_preemptions > self._num_preemptions:
            self.preemptions.inc(stats.num_preemptions - self._num_preemptions)
            self._num_preemptions = stats.num_preemptions
        if stats.spec_decode is not None:
            self._record_spec_decode(stats.spec_decode)

    def _record_spec_decode(self, spec) -> None:
        """Advance the counters by what the engine's cumulative SpecDecodeStats added."""
        drafts, draft_tokens, accepted, per_pos = self._spec_seen
        self.spec_drafts.inc(spec.num_drafts - drafts)
        self.spec_draft_tokens.inc(spec.num_draft_tokens - draft_tokens)
        self.spec_accepted_tokens.inc(spec.num_accepted_tokens - accepted)
        for position, count in enumerate(spec.num_accepted_tokens_per_pos):
            seen = per_pos[position] if position < len(per_pos) else 0
            self.spec_accepted_per_pos.labels(self._model_name, str(position)).inc(count - seen)
        self._spec_seen = (
            spec.num_drafts, spec.num_draft_tokens, spec.num_accepted_tokens,
            list(spec.num_accepted_tokens_per_pos),
        )  # fmt: skip

    def record_finished(self, output: RequestOutput) -> None:
        """Count tokens and latencies of a finished request (engine thread)."""
        reasons = {c.finish_reason for c in output.outputs if c.finish_reason} or {"abort"}
        for reason in reasons:
            self.request_success.labels(self._model_name, reason).inc()
        self.prompt_tokens.inc(len(output.prompt_token_ids))
        metrics = output.metrics
        if metrics is None:
            return
        self.generation_tokens.inc(metrics.num_generation_tokens)
        for histogram, value in (
            (self.ttft, metrics.time_to_first_token),
            (self.tpot, metrics.time_per_output_token),
            (self.e2e, metrics.e2e_latency),
        ):
            if value is not None:
                histogram.observe(value)

    def record_http(self, route: str, status: int) -> None:
        """Count one HTTP response (event loop)."""
        self.http_requests.labels(route, str(status)).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _counter(name: str, doc: str, registry: CollectorRegistry, labels: dict[str, str]):
    return Counter(name, doc, list(labels), registry=registry).labels(**labels)


def _gauge(name: str, doc: str, registry: CollectorRegistry, labels: dict[str, str]):
    return Gauge(name, doc, list(labels), registry=registry).labels(**labels)


def _histogram(
    name: str,
    doc: str,
    buckets: tuple[float, ...],
    registry: CollectorRegistry,
    labels: dict[str, str],
):
    return Histogram(name, doc, list(labels), buckets=buckets, registry=registry).labels(**labels)
