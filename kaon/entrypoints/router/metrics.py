"""Prometheus metrics of the data-parallel front (prometheus-client).

Per replica (label ``replica="i"``), read from the pool and router at scrape time:

    kaon:dp_replica_up                       1 while the replica passes /health
    kaon:dp_replica_pid                      its process id (for operators and tests)
    kaon:dp_replica_outstanding_requests     in-flight requests routed to it
    kaon:dp_replica_outstanding_tokens       their prompt + max_tokens still owed
    kaon:dp_replica_restarts_total           processes started after the first
    kaon:dp_requests_routed_total            requests sent to it, by reason (affinity, load)

plus ``kaon:dp_http_requests_total`` by route and status, and every replica's own ``kaon:*``
metrics with a ``replica`` label added (fetched when /metrics is scraped; a replica that does
not answer within a second is left out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import httpx
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from kaon.entrypoints.router.replica import ReplicaPool


class RouterMetrics:
    """The front's registry: replica state collector, HTTP counter, routing counter."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        self.registry = CollectorRegistry()
        self.registry.register(_ReplicaCollector(pool))
        self.http_requests = Counter(
            "kaon:dp_http_requests", "HTTP requests to the front by route and status code",
            ["route", "status"], registry=self.registry,
        )  # fmt: skip
        self.routed = Counter(
            "kaon:dp_requests_routed", "Requests routed to each replica, by reason",
            ["replica", "reason"], registry=self.registry,
        )  # fmt: skip

    def record_http(self, route: str, status: int) -> None:
        """Count one HTTP response (the interface HTTPMetricsMiddleware calls)."""
        self.http_requests.labels(route, str(status)).inc()

    def record_routed(self, replica: int, reason: str) -> None:
        self.routed.labels(str(replica), reason).inc()

    async def render(self, client: httpx.AsyncClient) -> bytes:
        """The front's metrics followed by the replicas' own, labelled by replica."""
        up = [r for r in self.pool.replicas if r.up]
        texts = await asyncio.gather(
            *(_fetch(client, f"{r.url}/metrics") for r in up), return_exceptions=True
        )
        families: dict[str, Metric] = {}
        for replica, text in zip(up, texts, strict=True):
            if isinstance(text, str):
                _merge(families, text, str(replica.index))
        replica_registry = CollectorRegistry()
        replica_registry.register(_StaticCollector(list(families.values())))
        return generate_latest(self.registry) + generate_latest(replica_registry)


async def _fetch(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url, timeout=1.0)
    response.raise_for_status()
    return response.text


def _merge(families: dict[str, Metric], text: str, replica: str) -> None:
    for family in text_string_to_metric_families(text):
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(family.name, family.documentation, family.type)
        for sample in family.samples:
            labels = {"replica": replica, **sample.labels}
            merged.add_sample(sample.name, labels, sample.value, sample.timestamp)


class _StaticCollector(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class _ReplicaCollector(Collector):
    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool

    def collect(self) -> Iterable[Metric]:
        families = {
            "up": GaugeMetricFamily(
                "kaon:dp_replica_up", "1 while the replica passes /health", labels=["replica"]
            ),
            "pid": GaugeMetricFamily(
                "kaon:dp_replica_pid", "Process id of the replica", labels=["replica"]
            ),
            "requests": GaugeMetricFamily(
                "kaon:dp_replica_outstanding_requests",
                "In-flight requests routed to the replica",
                labels=["replica"],
            ),  # fmt: skip
            "tokens": GaugeMetricFamily(
                "kaon:dp_replica_outstanding_tokens",
                "Outstanding tokens of the replica's in-flight requests (prompt + max_tokens)",
                labels=["replica"],
            ),
            "restarts": CounterMetricFamily(
                "kaon:dp_replica_restarts",
                "Replica processes started after the first",
                labels=["replica"],
            ),  # fmt: skip
        }
        for replica in self.pool.replicas:
            load = self.pool.router.replicas[replica.index]
            label = [str(replica.index)]
            families["up"].add_metric(label, float(replica.up))
            families["pid"].add_metric(label, float(replica.pid or 0))
            families["requests"].add_metric(label, float(load.num_requests))
            families["tokens"].add_metric(label, float(load.num_tokens))
            families["restarts"].add_metric(label, float(replica.restarts))
        return families.values()
