"""StructuredOutputManager: compiles grammars off the engine loop and fills token bitmasks.

    create_request(params) -- validate (sync) --> cached template Future (thread pool compile)
    grammar_bitmask(scheduler_output) -- llguidance, row by row (on a worker thread while the
        forward pass runs, with overlap=True) -->
        SchedulerOutput.grammar_bitmask [num_constrained_rows, cdiv(vocab_size, 32)] int32
        (or a Future of it)

Compiled templates are cached per grammar (the text of the constraint) for this engine's
tokenizer, so repeated schemas compile once. The llguidance tokenizer (~1 s to build for a 49k
vocabulary) is built lazily on the compile thread by the first structured request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import llguidance
import llguidance.numpy
import numpy as np

from kaon.outputs import SchedulerOutput
from kaon.sampling_params import StructuredOutputsParams
from kaon.structured_outputs.grammar import grammar_from_params
from kaon.structured_outputs.request import StructuredOutputRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from kaon.request import Request
    from kaon.tokenizer import Tokenizer

logger = logging.getLogger("kaon")

_MAX_TEMPLATES = 256  # compiled grammars kept per engine (LRU)
_COMPILE_THREADS = 2  # grammar compiles run here, never on the engine loop
# llguidance's own (rayon) pool computes a batch's masks in parallel; its workers spin while
# they wait, which on a machine with few cores takes CPU from the forward pass, so small
# machines compute the rows one after another on the engine thread instead.
_MASK_THREADS = min(8, (os.cpu_count() or 1) // 4)


class StructuredOutputManager:
    """Per-engine grammar compiler, template cache and bitmask builder (CPU only, no torch).

    ``vocab_size`` is the model's logits width; the bitmask covers ``max(vocab_size, tokenizer
    vocab)`` ids, and ids the tokenizer lacks are never allowed.
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: set[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = max(vocab_size, tokenizer.vocab_size)
        self._eos_token_ids = sorted(eos_token_ids)
        self._lock = threading.Lock()  # guards the template cache
        self._tokenizer_lock = threading.Lock()  # the first compile builds the llguidance tokenizer
        self._compile_pool: ThreadPoolExecutor | None = None
        self._mask_executor: llguidance.LLExecutor | None = None
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._templates: OrderedDict[str, Future[llguidance.LLMatcher]] = OrderedDict()
        self.compile_seconds: dict[str, float] = {}  # grammar -> seconds its compile took
        # Requests that may still sample (a finished one is dropped with its Request).
        self._live_requests: weakref.WeakSet[StructuredOutputRequest] = weakref.WeakSet()
        self._fill_thread: ThreadPoolExecutor | None = None  # grammar_bitmask(overlap=True)
        self._pending: _PendingBitmask | None = None  # the fill in flight, if any
        self._bitmask_buffer = llguidance.numpy.allocate_token_bitmask(0, self.vocab_size)

    # ------------------------------------------------------------------ admission

    def create_request(
        self, request_id: str, params: StructuredOutputsParams
    ) -> StructuredOutputRequest:
        """Validate ``params`` now and start (or reuse) the grammar's compile.

        Raises:
            ValueError: naming ``structured_outputs.<field>`` when it does not compile.
        """
        grammar = grammar_from_params(params)
        with self._lock:
            template = self._templates.get(grammar)
            if template is None:
                if self._compile_pool is None:
                    self._compile_pool = ThreadPoolExecutor(
                        _COMPILE_THREADS, thread_name_prefix="kaon-grammar"
                    )
                template = self._compile_pool.submit(self._compile, grammar)
                self._templates[grammar] = template
                if len(self._templates) > _MAX_TEMPLATES:
                    self._templates.popitem(last=False)
            else:
                self._templates.move_to_end(grammar)
        request = StructuredOutputRequest(request_id, template, fence=self.wait_for_fill)
        self._live_requests.add(request)
        return request

    def _compile(self, grammar: str) -> llguidance.LLMatcher:
        start = time.perf_counter()
        matcher = llguidance.LLMatcher(self.ll_tokenizer(), grammar, log_level=0)
        self.compile_seconds[grammar] = time.perf_counter() - start
        if matcher.is_error():  # validated at admission, so a tokenizer-dependent failure
            logger.warning("grammar failed to compile: %s", matcher.get_error())
        return matcher

    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the engine tokenizer (built once, from its tokenizer JSON)."""
        with self._tokenizer_lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = llguidance.LLTokenizer(
                    self._tokenizer.backend_tokenizer.to_str(),
                    n_vocab=self.vocab_size,
                    eos_token=self._eos_token_ids,
                )
            return self._ll_tokenizer

    # ------------------------------------------------------------------ each step

    def grammar_bitmask(
        self,
        scheduler_output: SchedulerOutput,
        requests: dict[str, Request],
        overlap: bool = False,
    ) -> None:
        """Fill ``scheduler_output.grammar_bitmask`` for the constrained requests that sample
        this step (bit ``i`` of row ``r`` set = token ``i`` allowed) and map their ids to rows
        in ``structured_output_request_ids``. Leaves both empty when no row is constrained.

        With ``overlap`` the rows are filled on a worker thread (llguidance releases the GIL) and
        ``grammar_bitmask`` is a ``Future`` of the array, so the engine runs the forward pass
        meanwhile; the runner joins it right before sampling. A matcher is never touched by two
        threads: every access through ``StructuredOutputRequest.matcher`` waits for the fill.
        The array is a view of a buffer reused by the next call.
        """
        self.wait_for_fill()
        if not self._live_requests:  # no constrained request anywhere: nothing to look at
            return
        matchers: list[tuple[llguidance.LLMatcher, int]] = []
        failed: list[int] = []  # rows whose grammar failed to compile: eos only
        rows: dict[str, int] = {}
        for scheduled in scheduler_output.scheduled_requests:
            request = requests.get(scheduled.request_id) if scheduled.sample else None
            structured = request.structured_output_request if request is not None else None
            if structured is None:
                continue
            row = len(rows)
            rows[scheduled.request_id] = row
            matcher = structured.matcher  # type: ignore[attr-defined]
            if matcher is None:
                failed.append(row)
            else:
                matchers.append((matcher, row))
        if not rows:
            return
        bitmask = self._bitmask_rows(len(rows))
        scheduler_output.structured_output_request_ids = rows
        if not overlap:
            scheduler_output.grammar_bitmask = self._fill(bitmask, matchers, failed)
            return
        if self._fill_thread is None:
            self._fill_thread = ThreadPoolExecutor(1, thread_name_prefix="kaon-grammar-mask")
        pending = _PendingBitmask()
        self._pending = pending
        self._fill_thread.submit(pending.run, self._fill, bitmask, matchers, failed)
        scheduler_output.grammar_bitmask = pending

    def wait_for_fill(self) -> None:
        """Block until the bitmask fill started by the last ``grammar_bitmask`` is done (its
        error, if any, is the runner's to raise)."""
        pending = self._pending
        if pending is not None:
            pending.exception()  # waits; never raises the fill's error
            self._pending = None

    def _bitmask_rows(self, num_rows: int) -> np.ndarray:
        """[num_rows, cdiv(vocab_size, 32)] int32, a view of a buffer kept between steps."""
        if self._bitmask_buffer.shape[0] < num_rows:
            capacity = max(num_rows, 2 * self._bitmask_buffer.shape[0])
            self._bitmask_buffer = llguidance.numpy.allocate_token_bitmask(
                capacity, self.vocab_size
            )
        return self._bitmask_buffer[:num_rows]

    def _fill(
        self,
        bitmask: np.ndarray,
        matchers: list[tuple[llguidance.LLMatcher, int]],
        failed: list[int],
    ) -> np.ndarray:
        """Each row's allowed tokens from its matcher (every word is written)."""
        if len(matchers) == 1 or _MASK_THREADS < 2:
            for matcher, row in matchers:
                llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, row)
        elif matchers:
            if self._mask_executor is None:
                self._mask_executor = llguidance.LLExecutor(_MASK_THREADS)
            llguidance.numpy.fill_next_token_bitmask_par(self._mask_executor, matchers, bitmask)
        failed = failed + [row for matcher, row in matchers if matcher.is_error()]
        words = bitmask.view(np.uint32)
        for row in failed:  # only eos left: end the request rather than go unchecked
            words[row] = 0
            for token_id in self._eos_token_ids:
                words[row, token_id // 32] |= np.uint32(1 << (token_id % 32))
        return bitmask

    def shutdown(self) -> None:
        if self._compile_pool is not None:
            self._compile_pool.shutdown(wait=False, cancel_futures=True)
        if self._fill_thread is not None:
            self._fill_thread.shutdown(wait=True)


class _PendingBitmask(Future):
    """The bitmask a worker thread is filling: ``result()`` is the numpy array.

    A tensor-parallel executor pickles the SchedulerOutput for its other ranks: it then waits
    for the fill and sends the array itself.
    """

    def run(self, fill: Callable[..., np.ndarray], *args: object) -> None:
        try:
            self.set_result(fill(*args))
        except BaseException as error:  # raised by the runner's result() on the engine thread
            self.set_exception(error)

    def __reduce__(self) -> tuple[Callable[..., np.ndarray], tuple[np.ndarray]]:
        return np.asarray, (self.result(),)
