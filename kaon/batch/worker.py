"""Worker side of a batch job: one cached engine per worker process, one task per partition.

Dask pickles ``run_partition`` by reference (module + name), so the cache below lives in the
worker process's copy of this module: the first partition a worker runs loads the engine, every
later one reuses it. Only one engine is kept per process (a task with other engine options
replaces it), and a lock serialises tasks on it, because ``LLM`` is not thread-safe and a worker
started with ``--nthreads > 1`` may run two tasks at once.
"""

from __future__ import annotations

import gc
import os
import threading
from dataclasses import dataclass
from typing import Any

from kaon.batch.records import BatchRecord
from kaon.outputs import RequestOutput

_lock = threading.Lock()
_engine_key: tuple | None = None
_engine: Any = None  # kaon.LLM, imported lazily: the driver never loads torch models itself
_num_engine_loads = 0


@dataclass
class PartitionResult:
    """What one partition task sends back to the driver."""

    partition_index: int
    outputs: list[RequestOutput]  # one per record, in record order; request_id = record index
    worker_pid: int  # the process that ran it
    num_engine_loads: int  # engines this process has loaded so far (1 unless options changed)


def engine_options_key(engine_options: dict[str, Any]) -> tuple:
    """A hashable key of the engine options (they are flat scalars, as the CLI makes them)."""
    return tuple(sorted(engine_options.items()))


def get_llm(engine_options: dict[str, Any]):
    """The process's engine for these options, loaded on first use and then kept.

    Call with ``_lock`` held.

    Raises:
        ValueError: for a bad engine option (from ``LLM``).
    """
    global _engine, _engine_key, _num_engine_loads
    key = engine_options_key(engine_options)
    if _engine is None or _engine_key != key:
        from kaon.entrypoints.llm import LLM

        _engine, _engine_key = None, None
        gc.collect()  # free the old engine's weights and KV cache before loading the new one
        _engine = LLM(**engine_options)
        _engine_key = key
        _num_engine_loads += 1
    return _engine


def run_partition(
    partition_index: int, records: list[BatchRecord], engine_options: dict[str, Any]
) -> PartitionResult:
    """Generate for every record of one partition with continuous batching (one
    ``LLM.generate`` over the whole partition) on this worker's cached engine.

    Raises:
        ValueError: for a bad prompt (e.g. longer than max_model_len) or engine option.
    """
    with _lock:
        llm = get_llm(engine_options)
        prompts = [
            record.prompt
            if record.messages is None
            else llm.tokenizer.apply_chat_template(record.messages, add_generation_prompt=True)
            for record in records
        ]
        params = [record.sampling_params for record in records]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        num_loads = _num_engine_loads
    for record, output in zip(records, outputs, strict=True):
        output.request_id = str(record.index)
        output.metrics = None  # timings of this worker's clock mean nothing to the driver
    return PartitionResult(partition_index, outputs, os.getpid(), num_loads)
