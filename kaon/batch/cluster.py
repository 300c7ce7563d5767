"""Dask clusters for batch jobs: connect to a running one or start a LocalCluster.

Layout on one machine with C cores and N local workers: N worker processes (``processes=True``,
each with its own engine: weights + KV cache), each running one task at a time
(``threads_per_worker=1``), each engine using C // N torch threads (``num_threads``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

# Worker deaths a task may cause before Dask gives up on it (KilledWorker). Dask's default, set
# explicitly: one death is an accident (OOM-killer, preempted node) and the partition is re-run;
# a partition that keeps killing workers (e.g. runs them out of memory) must not take down all.
ALLOWED_FAILURES = 3


def available_cores() -> int:
    """CPU cores this process may use (sched_getaffinity where the OS has it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_engine(num_workers: int, num_cores: int | None = None) -> int:
    """torch threads for each of ``num_workers`` engines sharing ``num_cores`` cores."""
    return max(1, (num_cores or available_cores()) // num_workers)


@contextlib.contextmanager
def dask_client(scheduler: str | None, local_workers: int | None) -> Iterator[Any]:
    """A ``dask.distributed.Client``: connected to ``scheduler`` (``tcp://host:8786``), or to a
    LocalCluster of ``local_workers`` processes started here and closed on exit.

    Raises:
        ValueError: when both or neither are given, or ``local_workers`` < 1.
        OSError / TimeoutError: when the scheduler cannot be reached (from Dask).
    """
    import dask
    from dask.distributed import Client, LocalCluster

    if (scheduler is None) == (local_workers is None):
        raise ValueError("give exactly one of --scheduler and --local-workers")
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    if isinstance(local_workers, bool) or not isinstance(local_workers, int) or local_workers < 1:
        raise ValueError(f"local_workers must be a positive integer, got {local_workers!r}")
    # The in-process scheduler reads allowed-failures when it is created.
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = LocalCluster(
            n_workers=local_workers,
            threads_per_worker=1,  # one task at a time: the engine batches inside the task
            processes=True,
            dashboard_address=None,
        )
    with cluster, Client(cluster) as client:
        yield client
