"""Start-up bookkeeping: one INFO line per load step with its seconds, and returning the heap
pages that loading freed.

Every step logs ``start-up: <step> in <seconds> s`` (logger ``kaon.startup``), so that
``kaon serve``'s log is the start-up breakdown BENCHMARKS.md tabulates:

    process start -> server code   interpreter + imports (torch, fastapi)
    C++ kernels                    import (or build, once per install)
    GGUF metadata                  header, key/values, tensor infos
    tokenizer                      rebuilt from the GGUF's tokenizer.ggml.* arrays
    weights                        dequantize / copy into the model, tensor by tensor
    KV cache                       allocation (zero pages, not yet resident)
    serving                        seconds since process start when /health answers
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("kaon.startup")
_IMPORTED_AT = time.monotonic()


def seconds_since_process_start() -> float:
    """Seconds since this process was started (Linux: /proc; elsewhere: since kaon.startup was
    first imported)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # Field 22 (starttime, clock ticks since boot); the command name (field 2) may hold
            # spaces, so split after its closing parenthesis.
            start_ticks = int(stat.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            uptime_s = float(uptime.read().split()[0])
        return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


def log_step(step: str, seconds: float, detail: str = "") -> None:
    """Log ``start-up: <step> in <seconds> s[ (detail)]`` at INFO."""
    suffix = f" ({detail})" if detail else ""
    logger.info("start-up: %s in %.2f s%s", step, seconds, suffix)


@contextmanager
def timed_step(step: str) -> Iterator[None]:
    """Log the seconds the ``with`` body took as start-up step ``step`` (not on an error)."""
    start = time.perf_counter()
    yield
    log_step(step, time.perf_counter() - start)


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim(0)``): loading frees
    hundreds of MB of temporary arrays, and a burst of requests tens of MB of step temporaries,
    that glibc's arenas otherwise keep resident. Returns whether memory was released; a no-op
    (False) without glibc. Takes milliseconds (9 ms measured with 100 MB free in 100k holes)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim`` through ctypes, or None (found once: find_library may run
    ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
