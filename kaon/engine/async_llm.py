"""AsyncLLM: the asyncio front of one LLMEngine, for servers.

LLMEngine is not thread-safe, so one engine thread owns it and is the only caller of
``add_request`` / ``abort_request`` / ``step``. The event loop talks to it through a command
queue, and each request's outputs come back through its own ``asyncio.Queue``:

    event loop                                   engine thread
    ----------                                   -------------
    add_request() --("add", id, prompt, ...)-->  engine.add_request (ValueError -> future)
    RequestStream.abort() --("abort", id)----->  engine.abort_request (KV blocks freed now)
                                                 loop: commands -> engine.step() -> outputs
    RequestStream <--- call_soon_threadsafe ---  per-request asyncio.Queue.put_nowait(output)

Backpressure: at most ``max_num_seqs + max_waiting_requests`` user requests are in flight; past
that, ``add_request`` raises ``EngineOverloadedError`` at once instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from kaon.core.scheduler import SchedulerStats
from kaon.engine.input_processor import PromptType
from kaon.engine.llm_engine import LLMEngine
from kaon.outputs import RequestOutput
from kaon.sampling_params import SamplingParams
from kaon.startup import release_free_heap

logger = logging.getLogger("kaon")


def load_engine_off_main_thread(**options: object) -> LLMEngine:
    """``LLMEngine.from_options(**options)``, run on a short-lived thread that ends before this
    returns. Servers load their engine this way so that the engine thread is the process's only
    OpenMP master.

    Why: torch's CPU ops run on GNU OpenMP. A thread that has run a parallel region keeps its
    team of worker threads until it exits. While the main thread's team lives, the engine thread's
    team makes more OpenMP threads than cores, and libgomp then makes every worker sleep after a
    short ("throttled") spin, so each of the ~150 small parallel regions of a decode step pays a
    wake-up. Measured here: a batch-1 SmolLM2 decode step took 54 ms on a second thread after
    loading on the main thread, 33 ms on the main thread, and 33 ms on a thread when the main
    thread had run no parallel region.

    Raises:
        ValueError, FileNotFoundError: as ``LLMEngine.from_options`` (re-raised here).
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kaon-load") as pool:
        return pool.submit(LLMEngine.from_options, **options).result()


class EngineOverloadedError(RuntimeError):
    """Too many requests in flight; the caller should retry later (HTTP 429)."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped (shutdown or an internal error); no request can run (HTTP 503)."""


class RequestFailedError(RuntimeError):
    """One request failed while it was being stepped; it was aborted, the engine goes on
    (HTTP 500 for that request alone)."""


class StatLogger(Protocol):
    """Receives engine statistics on the engine thread (kaon.metrics.PrometheusStatLogger)."""

    def record_stats(self, stats: SchedulerStats) -> None: ...

    def record_finished(self, output: RequestOutput) -> None: ...


class RequestStream:
    """The outputs of one request, as an async iterator that ends after the finished output.

    Leaving the iteration early (client disconnect, cancellation) must be followed by ``abort()``;
    it is idempotent and a no-op once the request finished.
    """

    def __init__(self, request_id: str, owner: AsyncLLM) -> None:
        self.request_id = request_id
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.finished = False
        self._owner = owner

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        while not self.finished:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                self._close()
                raise item
            if item.finished:
                self._close()
            yield item

    def abort(self) -> None:
        """Stop the request now if it is still running or waiting; its KV blocks are freed."""
        if not self.finished:
            self._close()
            self._owner._post(("abort", self.request_id))

    def _close(self) -> None:
        self.finished = True
        self._owner._streams.pop(self.request_id, None)


class AsyncLLM:
    """Runs an LLMEngine's step loop on its own thread and serves it to asyncio code.

    Use from one event loop: ``start()`` inside it, then ``add_request`` / iterate / ``abort``,
    then ``await shutdown()``.
    """

    def __init__(
        self,
        engine: LLMEngine,
        max_waiting_requests: int = 256,
        stat_logger: StatLogger | None = None,
    ) -> None:
        if max_waiting_requests < 0:
            raise ValueError(f"max_waiting_requests must be >= 0, got {max_waiting_requests}")
        self.engine = engine
        self.max_num_seqs = engine.config.scheduler_config.max_num_seqs
        self.max_waiting_requests = max_waiting_requests
        self.stat_logger = stat_logger
        self.stats = engine.stats()  # latest snapshot, refreshed by the engine thread
        self.dead_reason: str | None = None
        self.error: BaseException | None = None  # what killed the engine thread, if anything
        # Called on the event loop once the engine died of an error (the server exits then).
        self.on_dead: Callable[[], None] | None = None
        self._commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._streams: dict[str, RequestStream] = {}  # event-loop side: requests in flight
        self._queues: dict[str, RequestStream] = {}  # engine-thread side: where outputs go
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_options(cls, max_waiting_requests: int = 256, **options: object) -> AsyncLLM:
        """Build the engine from ``kaon.config`` options (``load_engine_off_main_thread``).
        Raises ValueError naming a bad option."""
        return cls(load_engine_off_main_thread(**options), max_waiting_requests)

    # ------------------------------------------------------------------ event-loop side

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.dead_reason is None

    @property
    def num_requests_in_flight(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume the outputs."""
        if self._thread is not None:
            raise RuntimeError("AsyncLLM already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="kaon-engine", daemon=True)
        self._thread.start()

    async def add_request(
        self, request_id: str, prompt: PromptType, sampling_params: SamplingParams
    ) -> RequestStream:
        """Validate and queue a request; returns the stream of its RequestOutputs.

        Waits at most one engine step (the engine thread takes commands between steps).

        Raises:
            ValueError: naming the bad field (from LLMEngine.add_request); nothing is queued.
            EngineOverloadedError: max_num_seqs + max_waiting_requests requests are in flight.
            EngineDeadError: the engine thread is not running.
        """
        if not self.is_running:
            raise EngineDeadError(self.dead_reason or "the engine is not running")
        if len(self._streams) >= self.max_num_seqs + self.max_waiting_requests:
            raise EngineOverloadedError(
                f"{len(self._streams)} requests are in flight (max_num_seqs {self.max_num_seqs} + "
                f"max_waiting_requests {self.max_waiting_requests}); retry later"
            )
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        stream = RequestStream(request_id, self)
        self._streams[request_id] = stream  # reserve the slot before the first await
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._post(("add", request_id, prompt, sampling_params, stream, done))
        try:
            await asyncio.wrap_future(done)
        except asyncio.CancelledError:
            stream.abort()  # the caller went away while the request was being queued
            raise
        except BaseException:
            stream._close()
            raise
        return stream

    async def generate(
        self, request_id: str, prompt: PromptType, sampling_params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Add a request and yield its outputs; leaving early aborts it. Raises as add_request."""
        stream = await self.add_request(request_id, prompt, sampling_params)
        try:
            async for output in stream:
                yield output
        finally:
            stream.abort()

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Abort what is left, stop the engine thread and wait for it (at most ``timeout`` s)."""
        if self._thread is None:
            return
        self._post(("stop",))
        await asyncio.to_thread(self._thread.join, timeout)
        self._thread = None
        self.engine.shutdown()  # tensor-parallel worker ranks exit

    def fail_all(self, message: str) -> None:
        """End every request in flight with ``EngineDeadError(message)`` (HTTP 503, an SSE error
        event) and free their KV blocks; the engine keeps running. Used when the shutdown
        timeout expires."""
        self._post(("fail", message))

    def _post(self, command: tuple) -> None:
        self._commands.put(command)

    # ------------------------------------------------------------------ engine-thread side

    def _run(self) -> None:
        busy = False
        try:
            while self._run_commands(block=not busy):
                busy = self.engine.has_unfinished_requests()
                if busy:
                    self._deliver(self.engine.step())
                    self._deliver_failures(self.engine.take_failed_requests())
                    busy = self.engine.has_unfinished_requests()
                    if not busy:  # idle now: the steps' freed temporaries back to the OS
                        release_free_heap()
                self._publish_stats()
        except Exception as error:  # an engine bug: fail every request rather than hang them
            logger.exception("engine step failed; the engine is stopped")
            self.error = error
            self.dead_reason = f"engine error: {type(error).__name__}: {error}"
            for stream in list(self._queues.values()):
                self._send(stream, EngineDeadError(self.dead_reason))
            self._queues.clear()
            if self.on_dead is not None and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the event loop is closed already
                    self._loop.call_soon_threadsafe(self.on_dead)
            return
        self.dead_reason = "the engine was shut down"

    def _run_commands(self, block: bool) -> bool:
        """Run the queued commands (waiting for one when ``block``); False after "stop"."""
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                break
        for command in commands:
            if command[0] == "add":
                self._add(*command[1:])
            elif command[0] == "abort":
                self._abort([command[1]])
            elif command[0] == "fail":
                request_ids = list(self._queues)
                for request_id in request_ids:
                    self._send(self._queues.pop(request_id), EngineDeadError(command[1]))
                self.engine.abort_request(request_ids)
            else:  # "stop"
                self._abort(list(self._queues))
                self._publish_stats()
                return False
        if commands:
            self._publish_stats()
        return True

    def _add(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        stream: RequestStream,
        done: concurrent.futures.Future[None],
    ) -> None:
        # The caller may have been cancelled meanwhile (its abort command comes next); then
        # the future is already cancelled and setting it raises InvalidStateError.
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            try:
                self.engine.add_request(request_id, prompt, params)
            except Exception as error:
                # TODO: LLMEngine.add_request can leave output-processor state behind when the
                # scheduler rejects a request the output processor already took; abort cleans it.
                self.engine.abort_request([request_id])
                done.set_exception(error)
                return
            self._queues[request_id] = stream
            done.set_result(None)

    def _abort(self, request_ids: list[str]) -> None:
        for output in self.engine.abort_request(request_ids):
            self._deliver([output])
        for request_id in request_ids:
            self._queues.pop(request_id, None)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._queues.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._queues[output.request_id]
                if self.stat_logger is not None:
                    self.stat_logger.record_finished(output)
            self._send(stream, output)

    def _deliver_failures(self, failed: dict[str, Exception]) -> None:
        for request_id, error in failed.items():
            stream = self._queues.pop(request_id, None)
            if stream is not None:
                message = f"request failed: {type(error).__name__}: {error}"
                self._send(stream, RequestFailedError(message))

    def _send(self, stream: RequestStream, item: RequestOutput | BaseException) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody listens any more
            self._loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _publish_stats(self) -> None:
        self.stats = self.engine.stats()
        if self.stat_logger is not None:
            self.stat_logger.record_stats(self.stats)
