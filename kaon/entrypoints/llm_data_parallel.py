"""Offline data parallelism: ``LLM(data_parallel_size=N)`` runs N engine replicas as processes.

    LLM.generate(prompts) ── split into N contiguous shards ──┬─► replica 0: LLM(dp=1).generate
        (main process: tokenizer only, no weights)            ├─► replica 1: LLM(dp=1).generate
                                                              └─► ...
    outputs = shard 0 + shard 1 + ... (input order), request ids from the main LLM

Each replica is a spawned process with its own weights and KV cache, using ``num_threads``
torch threads (default: the process's cores // N, so the replicas split the cores). Replicas
talk to the main process over one ``multiprocessing`` pipe each; requests and outputs are the
picklable ``SamplingParams`` and ``RequestOutput``. Greedy outputs equal DP=1's: a request's
tokens do not depend on which other requests share its batch. Random sampling without a
per-request ``seed`` draws from each replica's own generator, so it differs from DP=1.

Replicas stop on ``close()``, when the LLM is garbage-collected, at interpreter exit, and by
themselves when the main process dies (their pipe reaches EOF): no orphans.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any

from tqdm.auto import tqdm

from kaon.outputs import RequestOutput
from kaon.sampling_params import SamplingParams

logger = logging.getLogger("kaon")

_JOIN_TIMEOUT_S = 10.0  # seconds a replica gets to exit after "close" before it is terminated


def _replica_main(
    conn: Connection, replica_class: type, model: str | None, engine_options: dict[str, Any]
) -> None:
    """Body of one replica process: load an engine (``replica_class(model, **engine_options)``,
    the ``LLM`` class), then serve ``generate`` calls until "close" or until the main process
    goes away (EOF on the pipe)."""
    try:
        llm = replica_class(model, **engine_options)
        conn.send(("ready", (llm.tokenizer, llm.engine.generation_defaults)))
    except Exception as error:  # reported to the main process, which raises it
        conn.send(("error", error))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # main process gone
        if message[0] == "close":
            return
        _, prompts, params = message
        try:
            conn.send(("ok", llm.generate(prompts, params, use_tqdm=False)))
        except Exception as error:
            conn.send(("error", error))


def _shutdown(processes: list[Any], conns: list[Connection]) -> None:
    """Ask every replica to stop, wait, then terminate the ones that did not."""
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):  # already gone
            conn.send(("close",))
    for process in processes:
        process.join(_JOIN_TIMEOUT_S)
        if process.is_alive():
            process.terminate()
            process.join(_JOIN_TIMEOUT_S)
    for conn in conns:
        conn.close()


def _num_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class DataParallelEngines:
    """N engine replica processes behind ``LLM.generate``.

    Each replica runs ``replica_class(model, **engine_options)`` (the ``LLM`` class, passed in
    so that this module does not import the one that imports it); ``data_parallel_size`` (N) is
    taken out of ``engine_options`` and ``num_threads`` is per replica (default: cores // N).

    Raises:
        ValueError: a replica's engine error (bad option), raised after stopping all replicas.
        RuntimeError: when a replica process dies.
    """

    def __init__(
        self, replica_class: type, model: str | None, engine_options: dict[str, Any]
    ) -> None:
        options = dict(engine_options)
        self.data_parallel_size = int(options.pop("data_parallel_size"))
        if options.get("num_threads") is None:
            options["num_threads"] = max(1, _num_cores() // self.data_parallel_size)
        context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
        self._processes: list[Any] = []
        self._conns: list[Connection] = []
        # Registered before the first start, so a failing start still stops the replicas.
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._conns)
        for rank in range(self.data_parallel_size):
            parent_conn, child_conn = context.Pipe()
            process = context.Process(
                target=_replica_main, args=(child_conn, replica_class, model, options),
                name=f"kaon-dp-replica-{rank}", daemon=True,
            )  # fmt: skip
            process.start()
            child_conn.close()
            self._processes.append(process)
            self._conns.append(parent_conn)
        ready = [self._receive(rank) for rank in range(self.data_parallel_size)]
        for kind, payload in ready:
            if kind == "error":
                self.close()
                raise payload
        self.tokenizer, self.generation_defaults = ready[0][1]
        logger.info(
            "data parallel: %d replicas x %d threads", self.data_parallel_size,
            options["num_threads"],
        )  # fmt: skip

    def _send(self, rank: int, message: tuple) -> None:
        try:
            self._conns[rank].send(message)
        except OSError:  # BrokenPipeError: the replica is gone
            self._died(rank)

    def _died(self, rank: int) -> None:
        self.close()
        raise RuntimeError(
            f"data-parallel replica {rank} died (exit code {self._processes[rank].exitcode})"
        )

    def _receive(self, rank: int) -> tuple[str, Any]:
        """The next ``(kind, payload)`` from a replica; kind is "ready", "ok" or "error"."""
        try:
            return self._conns[rank].recv()
        except (EOFError, OSError):
            self._died(rank)
            raise  # not reached: _died raises

    def generate(
        self,
        request_ids: list[str],
        prompts: list[Any],
        params: list[SamplingParams],
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        """Run contiguous shards of the prompts on the replicas; outputs in input order, with
        ``request_ids`` set.

        Raises:
            ValueError: the first replica's error for a bad prompt or parameter (the other
                replicas' outputs are dropped).
            RuntimeError: when a replica died; the LLM is closed then.
        """
        if not self._finalizer.alive:
            raise RuntimeError("this LLM is closed")
        bounds = _shard_bounds(len(prompts), self.data_parallel_size)
        active = [rank for rank, (start, stop) in enumerate(bounds) if stop > start]
        for rank in active:
            start, stop = bounds[rank]
            self._send(rank, ("generate", prompts[start:stop], params[start:stop]))
        results: dict[int, list[RequestOutput]] = {}
        errors: dict[int, Exception] = {}
        progress = tqdm(total=len(prompts), desc="Generating", disable=not use_tqdm, unit="req")
        with progress:
            pending = {self._conns[rank]: rank for rank in active}
            while pending:
                for conn in wait(list(pending)):
                    rank = pending.pop(conn)  # type: ignore[call-overload]
                    kind, payload = self._receive(rank)
                    if kind == "error":  # a bad request: the replica itself is still fine
                        errors[rank] = payload
                    else:
                        results[rank] = payload
                    progress.update(bounds[rank][1] - bounds[rank][0])
        if errors:
            raise errors[min(errors)]
        outputs = [output for rank in active for output in results[rank]]
        for request_id, output in zip(request_ids, outputs, strict=True):
            output.request_id = request_id
        return outputs

    def close(self) -> None:
        """Stop every replica process (idempotent)."""
        self._finalizer()


def _shard_bounds(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``num_shards`` contiguous shards whose sizes differ by at most 1."""
    base, extra = divmod(num_items, num_shards)
    bounds, start = [], 0
    for rank in range(num_shards):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds
