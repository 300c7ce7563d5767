"""MultiprocExecutor: tensor parallelism over ``tensor_parallel_size`` ranks started by kaon.

    engine process: rank 0 (Worker + ModelRunner; gathers logits and samples)
        |  each step: pickled ("execute_model", SchedulerOutput) on one socket pair per worker
        v
    worker processes: ranks 1..N-1, loop: recv -> Worker.execute_model -> (no reply)

Workers are fresh interpreters (``python -c`` importing ``worker_main``), not multiprocessing
spawns, so a user script without an ``if __name__ == "__main__"`` guard still works, and they run
the same kaon package as the engine (its directory goes first on their PYTHONPATH).

All ranks join one torch.distributed group through a TCPStore on loopback (gloo on CPU, NCCL for
CUDA tensors) and meet in the model's collectives: 2 all-reduces per layer, 1 for the embedding,
1 gather of the logits. Workers send nothing back per step: rank 0's sampled token ids are the
step's result, and the next SchedulerOutput carries them to every rank.

Failures: a worker that raises sends its traceback on its pipe and exits; a dead worker breaks
the next collective or pipe write (and a hung one hits the group timeout, ``KAON_TP_TIMEOUT``);
either way ``execute_model`` raises RuntimeError naming the rank, stops the other workers, and
the executor refuses further steps. Workers exit when the engine shuts down, when its process
exits (they are daemonic), or when their pipe closes (the engine process died).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

import kaon
from kaon import envs
from kaon.config import EngineConfig
from kaon.device import resolve_device
from kaon.distributed.parallel_state import (
    create_store,
    current_group,
    destroy_tensor_parallel,
    init_tensor_parallel,
)
from kaon.executor.executor import DriverExecutor
from kaon.models.loader.loader import read_architecture
from kaon.models.loader.tp_shard import plan_for
from kaon.outputs import ModelRunnerOutput, SchedulerOutput
from kaon.worker.worker import Worker

logger = logging.getLogger("kaon")

_SHUTDOWN = pickle.dumps(("shutdown", ()))


def default_threads_per_rank(tp_size: int) -> int:
    """CPU threads for each rank when ``num_threads`` is not set: this process's torch thread
    count (the cores) divided among the ranks, at least 1."""
    return max(1, torch.get_num_threads() // tp_size)


class MultiprocExecutor(DriverExecutor):
    """Spawns ranks 1..N-1, runs rank 0 here; same interface as UniprocExecutor.

    Raises:
        ValueError: from loading or splitting the model (e.g. naming ``tensor_parallel_size``).
        RuntimeError: a worker rank failed to start (its error is in the message).
    """

    def __init__(self, config: EngineConfig) -> None:
        parallel = config.parallel_config
        tp_size = parallel.tensor_parallel_size
        # Fail before starting any process: a split that cannot work, a second group.
        plan_for(read_architecture(config.model_config.model), 0, tp_size)
        device = resolve_device(config.model_config.device)
        if device.type == "cuda" and torch.cuda.device_count() < tp_size:
            raise ValueError(
                f"tensor_parallel_size {tp_size} needs {tp_size} GPUs (one per rank); "
                f"{torch.cuda.device_count()} are visible"
            )
        if current_group() is not None:
            raise RuntimeError(
                "a tensor-parallel engine already runs in this process; close it first "
                "(one tensor_parallel_size > 1 engine per process)"
            )
        threads = parallel.num_threads or default_threads_per_rank(tp_size)
        config = dataclasses.replace(
            config, parallel_config=dataclasses.replace(parallel, num_threads=threads)
        )
        self._saved_threads = torch.get_num_threads()
        self._processes: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._failure: RuntimeError | None = None
        self._closed = False
        timeout = envs.tp_timeout_seconds()
        self._store = create_store(0, is_master=True, timeout_s=timeout)
        for rank in range(1, tp_size):
            process, conn = _start_worker()
            self._processes.append(process)
            self._conns.append(conn)
            conn.send((config, rank, tp_size, self._store.port, timeout))
        self._joined: list[bool] = []  # [True] once this executor owns the process's group
        self._finalizer = weakref.finalize(
            self, _stop, self._processes, self._conns, self._saved_threads, self._joined
        )
        try:
            group = init_tensor_parallel(0, tp_size, self._store, device, timeout)
            self._joined.append(True)
            self.driver = Worker(config, group)
            self.num_blocks = group.min_int(self.driver.num_blocks_for_budget())
            self.driver.initialize_cache(self.num_blocks)
        except ValueError:
            self.shutdown()
            raise
        except Exception as error:
            failure = self._worker_failure(error)
            self.shutdown()
            raise failure from error
        logger.info("tensor parallel: %d ranks x %d threads (pids %s)", tp_size, threads,
                    [os.getpid()] + [p.pid for p in self._processes])  # fmt: skip

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of ranks 1..N-1."""
        return [p.pid for p in self._processes]

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Send the step to every worker, run rank 0's share here; rank 0's output.

        Raises:
            RuntimeError: a rank failed (now or in an earlier step); the executor is stopped.
        """
        return self.collective_rpc("execute_model", scheduler_output)

    def collective_rpc(self, method: str, *args: Any) -> Any:
        """Call ``Worker.<method>(*args)`` on every rank; returns rank 0's result.

        Raises:
            RuntimeError: as ``execute_model``.
        """
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("the tensor-parallel executor is shut down")
        try:
            for rank, process in enumerate(self._processes, start=1):
                if process.poll() is not None:
                    raise RuntimeError(f"rank {rank} is not running")
            payload = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
            for conn in self._conns:
                conn.send_bytes(payload)
            return getattr(self.driver, method)(*args)
        except Exception as error:
            self._failure = self._worker_failure(error)
            self.shutdown()
            raise self._failure from error

    def _worker_failure(self, error: BaseException) -> RuntimeError:
        """A RuntimeError naming the failed worker ranks and their errors (or exit codes)."""
        details = []
        for rank, (process, conn) in enumerate(zip(self._processes, self._conns, strict=True), 1):
            message = None
            with contextlib.suppress(Exception):
                if conn.poll(0.5):
                    message = conn.recv()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)
            if message:
                details.append(f"rank {rank} raised: {message.strip().splitlines()[-1]}")
            elif process.returncode is not None:
                details.append(f"rank {rank} exited with code {process.returncode}")
        cause = "; ".join(details) or f"{type(error).__name__}: {error}"
        return RuntimeError(f"tensor-parallel step failed ({cause}); the engine is stopped")

    def shutdown(self) -> None:
        """Stop the workers (they exit their loop; stragglers are terminated) and leave the
        group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()


def _start_worker() -> tuple[subprocess.Popen, Connection]:
    """A fresh interpreter running ``worker_main`` on one end of a socket pair."""
    parent_sock, child_sock = socket.socketpair()
    env = dict(os.environ)
    package_root = str(Path(kaon.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    fd = child_sock.fileno()
    code = f"from kaon.executor.multiproc import worker_main; worker_main({fd})"
    process = subprocess.Popen([sys.executable, "-c", code], pass_fds=(fd,), env=env)
    child_sock.close()
    return process, Connection(parent_sock.detach())


def _stop(
    processes: list[subprocess.Popen], conns: list[Connection], threads: int, joined: list[bool]
) -> None:
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send_bytes(_SHUTDOWN)
    for process in processes:
        for action in (None, process.terminate, process.kill):
            if action is not None:
                action()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
                break
    for conn in conns:
        conn.close()
    if joined:
        destroy_tensor_parallel()
    torch.set_num_threads(threads)


def worker_main(fd: int) -> None:
    """Entry point of a worker process. ``fd``: its end of the socket pair to the engine, which
    first sends (EngineConfig, rank, tp_size, store port, timeout in seconds).

    The worker joins the group, loads its shard, sizes and allocates the KV cache (the same
    block count as every rank), then runs each step received on the socket until
    ("shutdown",) or until the socket closes. On an error the traceback goes back on the
    socket and the process exits with code 1."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine process's to handle
    conn = Connection(fd)
    try:
        config, rank, tp_size, port, timeout_s = conn.recv()
        store = create_store(port, is_master=False, timeout_s=timeout_s)
        device = resolve_device(config.model_config.device)
        group = init_tensor_parallel(rank, tp_size, store, device, timeout_s)
        worker = Worker(config, group)
        worker.initialize_cache(group.min_int(worker.num_blocks_for_budget()))
        while True:
            try:
                method, args = pickle.loads(conn.recv_bytes())
            except EOFError:  # the engine process is gone
                break
            if method == "shutdown":
                break
            getattr(worker, method)(*args)
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(traceback.format_exc())
        os._exit(1)  # skip destroy_process_group: peers may be gone
    destroy_tensor_parallel()
