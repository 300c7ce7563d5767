"""Engine replicas as supervised ``kaon serve`` subprocesses on loopback ports.

Each replica is a whole single-process server (its own weights, KV cache and torch threads)
started with ``--data-parallel-size 1 --port P`` on 127.0.0.1. A supervisor task per replica:

    spawn --> poll /health until 200 --> up (router.set_healthy) --> watch --> down --> kill
      ^          (exits first: fatal while the pool is starting)      |  exit, or /health fails
      |                                                               |  `max_health_failures`
      +---------------- sleep backoff (1, 2, 4 ... max_backoff s) <---+  times in a row

Replicas run in their own session (a Ctrl-C on the terminal reaches only the front, which stops
them in order) and get SIGKILL from the kernel if the front dies (Linux PR_SET_PDEATHSIG), so no
replica outlives the front.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from kaon.entrypoints.router.policy import Router

logger = logging.getLogger("kaon")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ReplicaStartupError(RuntimeError):
    """A replica exited or never became healthy while the pool was starting."""


@dataclass
class Replica:
    """One engine replica's process state (the router holds its load)."""

    index: int
    process: subprocess.Popen | None = None
    port: int = 0
    up: bool = False
    restarts: int = 0  # processes started after the first one
    up_since: float = 0.0  # time.monotonic() when it last became healthy
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ReplicaPool:
    """Starts, watches, restarts and stops the replicas.

    Args:
        command: the replica's argv without ``--port`` (``python -m kaon serve ...``).
        router: told when each replica goes up or down.
        health_interval: seconds between /health probes of an up replica.
        health_timeout: seconds one probe may take (a busy 1-thread replica answers slowly).
        max_health_failures: failed probes in a row that make an up replica count as hung.
        min_backoff, max_backoff: seconds before a restart; doubles per restart, and drops back
            to ``min_backoff`` once a replica stayed up for ``stable_after`` seconds.
        startup_timeout: seconds a new replica may take to load its model and pass /health.
    """

    def __init__(
        self,
        command: list[str],
        router: Router,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        health_interval: float = 2.0,
        health_timeout: float = 10.0,
        max_health_failures: int = 3,
        min_backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_after: float = 60.0,
        startup_timeout: float = 600.0,
    ) -> None:
        self.command, self.router, self.env, self.headers = command, router, env, headers or {}
        self.replicas = [Replica(i) for i in range(len(router.replicas))]
        self.health_interval, self.health_timeout = health_interval, health_timeout
        self.max_health_failures = max_health_failures
        self.min_backoff, self.max_backoff, self.stable_after = (
            min_backoff,
            max_backoff,
            stable_after,
        )
        self.startup_timeout = startup_timeout
        self._tasks: list[asyncio.Task] = []
        self._starting = True
        self._startup_error: ReplicaStartupError | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Spawn every replica and wait until all pass /health.

        Raises:
            ReplicaStartupError: a replica exited or timed out before its first healthy probe
                (bad engine options, no memory, port taken); every replica is stopped then.
        """
        self._client = httpx.AsyncClient(timeout=self.health_timeout, headers=self.headers)
        self._tasks = [asyncio.create_task(self._supervise(r)) for r in self.replicas]
        waits = [asyncio.create_task(r.ready.wait()) for r in self.replicas]
        try:
            while not all(r.ready.is_set() for r in self.replicas):
                if self._startup_error is not None:
                    raise self._startup_error
                await asyncio.wait(waits, timeout=0.2)
        finally:
            for wait in waits:
                wait.cancel()
        self._starting = False
        logger.info("all %d replicas are up", len(self.replicas))

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop supervising, SIGTERM every replica, SIGKILL what is left after ``timeout`` s,
        and reap them all (no orphans, no zombies)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for replica in self.replicas:
            self.router.set_healthy(replica.index, False)
            replica.up = False
            if replica.alive():
                replica.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(r.alive() for r in self.replicas) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.kill_all()
        if self._client is not None:
            await self._client.aclose()

    def kill_all(self) -> None:
        """SIGKILL and reap every replica still running (the last resort; synchronous)."""
        for replica in self.replicas:
            if replica.alive():
                logger.warning("replica %d (pid %s) did not stop; killing", replica.index,
                               replica.pid)  # fmt: skip
                replica.process.kill()
            if replica.process is not None:
                replica.process.wait()

    # ------------------------------------------------------------------ supervision

    async def _supervise(self, replica: Replica) -> None:
        backoff = self.min_backoff
        while True:
            try:
                self._spawn(replica)
            except OSError as error:  # fork failed (no memory, too many processes)
                logger.exception("replica %d could not be started", replica.index)
                if self._starting:
                    self._startup_error = ReplicaStartupError(f"replica {replica.index}: {error}")
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if await self._wait_healthy(replica):
                self._set_up(replica, True)
                reason = await self._watch(replica)
                self._set_up(replica, False)
                if time.monotonic() - replica.up_since >= self.stable_after:
                    backoff = self.min_backoff
            else:
                reason = self._exit_reason(replica) or "did not pass /health in time"
                if self._starting:
                    self._kill(replica)
                    self._startup_error = ReplicaStartupError(
                        f"replica {replica.index} (pid {replica.pid}) {reason} while starting"
                    )
                    return
            self._kill(replica)
            logger.warning("replica %d (pid %s) %s; restarting in %.0f s", replica.index,
                           replica.pid, reason, backoff)  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
            replica.restarts += 1

    def _spawn(self, replica: Replica) -> None:
        replica.port = free_port()
        replica.process = subprocess.Popen(  # noqa: S603 - our own argv
            [*self.command, "--port", str(replica.port)], env=self.env,
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
        )  # fmt: skip
        logger.info("replica %d: pid %d on port %d", replica.index, replica.pid, replica.port)

    def _set_up(self, replica: Replica, up: bool) -> None:
        replica.up = up
        if up:
            replica.up_since = time.monotonic()
            replica.ready.set()
            logger.info("replica %d (pid %s) is up", replica.index, replica.pid)
        self.router.set_healthy(replica.index, up)

    async def _wait_healthy(self, replica: Replica) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while replica.alive() and time.monotonic() < deadline:
            if await self._probe(replica):
                return True
            await asyncio.sleep(0.25)
        return False

    async def _watch(self, replica: Replica) -> str:
        """Returns why the replica stopped being usable: it exited, or it stopped answering."""
        failures, next_probe = 0, time.monotonic() + self.health_interval
        while True:
            if not replica.alive():
                return self._exit_reason(replica) or "exited"
            if time.monotonic() >= next_probe:
                failures = 0 if await self._probe(replica) else failures + 1
                if failures >= self.max_health_failures:
                    return f"failed {failures} health checks in a row"
                next_probe = time.monotonic() + self.health_interval
            await asyncio.sleep(0.1)

    async def _probe(self, replica: Replica) -> bool:
        assert self._client is not None
        try:
            response = await self._client.get(f"{replica.url}/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    @staticmethod
    def _exit_reason(replica: Replica) -> str | None:
        code = replica.process.poll() if replica.process is not None else None
        if code is None:
            return None
        return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"

    @staticmethod
    def _kill(replica: Replica) -> None:
        if replica.alive():
            replica.process.kill()
        if replica.process is not None:
            replica.process.wait()  # SIGKILLed: returns at once
