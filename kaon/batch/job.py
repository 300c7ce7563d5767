"""Driver side of a batch job: submit partitions to a Dask cluster, collect them in order.

    input.jsonl ──read_records──► [BatchRecord] ──split──► partitions 0..P-1
        │ skip the ones already in OUTPUT.jsonl.parts/
        ▼
    client.submit(run_partition, i, records, engine_options)   (one task per partition)
        │ workers: one cached LLM each, LLM.generate over the partition (continuous batching)
        ▼
    as_completed ──► PartStore.write_part(i) (atomic) ──► progress bar
        ▼
    PartStore.assemble ──► OUTPUT.jsonl (input order)

Fault tolerance is Dask's: when a worker dies, the scheduler re-runs its unfinished tasks on
other workers (up to ``distributed.scheduler.allowed-failures`` times per task, after which the
job fails with ``KilledWorker``). Results go back to the driver, which alone writes files, so
workers need no shared file system.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kaon.batch.partitions import PartStore, job_fingerprint, split
from kaon.batch.records import BatchRecord, output_record, read_records, records_from_prompts
from kaon.batch.worker import PartitionResult, run_partition
from kaon.outputs import RequestOutput
from kaon.sampling_params import SamplingParams

DEFAULT_PARTITION_SIZE = 64  # records per task for `kaon batch` (fixed, so reruns can resume)
TASK_RETRIES = 1  # re-runs of a task that raised (not of worker deaths: those are Dask's own)


@dataclass
class BatchJobReport:
    """What a job did: which partitions ran now, which were already written, engine loads."""

    num_records: int
    num_partitions: int
    skipped_partitions: list[int]  # found complete in OUTPUT.jsonl.parts/ and not run again
    executed_partitions: list[int]  # run by this job, in completion order
    engine_loads: dict[int, int] = field(default_factory=dict)  # worker pid -> engines loaded


def run_batch_job(
    client: Any,
    input_path: str | Path,
    output_path: str | Path,
    default_params: SamplingParams,
    engine_options: dict[str, Any] | None = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    use_tqdm: bool = True,
) -> BatchJobReport:
    """Run ``kaon batch``: every input line through the cluster, ``output_path`` in input order.

    ``client`` is a ``dask.distributed.Client``. Partitions already written by an earlier run
    of the same job are skipped.

    Raises:
        ValueError: for a bad input line (naming the file, line and field), a bad option, or a
            parts directory of a different job.
        FileNotFoundError: when the input file does not exist.
        distributed.KilledWorker: when one partition killed ``allowed-failures`` workers.
    """
    engine_options = dict(engine_options or {})
    records = read_records(input_path, default_params)
    partitions = split(len(records), partition_size)
    store = PartStore(output_path)
    options = {"sampling": repr(default_params), **engine_options}
    store.open(job_fingerprint(input_path, partition_size, options), len(partitions))
    done = store.finished(len(partitions))
    todo = [i for i in range(len(partitions)) if i not in done]
    report = BatchJobReport(len(records), len(partitions), sorted(done), [])
    num_done_records = sum(len(partitions[i]) for i in done)
    progress = tqdm(
        total=len(records), initial=num_done_records, desc="kaon batch", unit="prompt",
        disable=not use_tqdm,
    )  # fmt: skip
    with progress:
        for result in _run_partitions(client, records, partitions, todo, engine_options):
            lines = [
                output_record(records[index], output)
                for index, output in zip(partitions[result.partition_index], result.outputs,
                                         strict=True)
            ]  # fmt: skip
            store.write_part(result.partition_index, lines)
            report.executed_partitions.append(result.partition_index)
            report.engine_loads[result.worker_pid] = result.num_engine_loads
            progress.update(len(lines))
            progress.set_postfix(partitions=f"{len(done) + len(report.executed_partitions)}"
                                 f"/{len(partitions)}")  # fmt: skip
    store.assemble(partitions)
    return report


def _run_partitions(
    client: Any,
    records: list[BatchRecord],
    partitions: list[range],
    todo: list[int],
    engine_options: dict[str, Any],
):
    """Submit one task per partition in ``todo``; yield PartitionResults as they finish.

    On an error every other task is cancelled before the error propagates.
    """
    from dask.distributed import as_completed

    job_token = uuid.uuid4().hex[:12]  # unique task keys, so two jobs on one cluster never mix
    futures = [
        client.submit(
            run_partition,
            i,
            [records[j] for j in partitions[i]],
            engine_options,
            key=f"kaon-batch-{job_token}-partition-{i}",
            pure=False,
            retries=TASK_RETRIES,
        )  # fmt: skip
        for i in todo
    ]
    try:
        for future in as_completed(futures):
            result: PartitionResult = future.result()
            future.release()  # drop the outputs from cluster memory once they are on disk
            yield result
    finally:
        client.cancel([f for f in futures if not f.done()])


def default_partition_size(num_records: int, num_workers: int) -> int:
    """Records per task for the Python API: about 4 tasks per worker (balance, and little lost
    when a worker dies), at most 256 records (one engine batch is enough to fill the cores)."""
    return max(1, min(256, math.ceil(num_records / (4 * max(1, num_workers)))))


def generate(
    client: Any,
    prompts: list[str | list[int] | list[dict[str, Any]]],
    sampling_params: SamplingParams | list[SamplingParams] | None = None,
    partition_size: int | None = None,
    use_tqdm: bool = True,
    **engine_options: Any,
) -> list[RequestOutput]:
    """Generate for many prompts on a Dask cluster; return one RequestOutput per prompt, in
    input order (``request_id`` is the prompt's index as a string; ``metrics`` is None).

    ``client`` is a ``dask.distributed.Client``; each prompt is a text, token ids or a chat
    conversation (a list of ``{"role", "content"}`` messages, rendered with the chat template).
    ``sampling_params`` defaults to ``SamplingParams()``; ``engine_options`` are ``LLM``'s
    (``kv_cache_memory_bytes``, ``num_threads``, ...) and each worker loads one engine with
    them once. Nothing is written to disk, so there is no resume: use ``run_batch_job`` for that.

    Raises:
        ValueError: ``"prompts[i]: ..."`` for a bad prompt or sampling parameter, before any task
            is submitted; a worker-side ValueError (e.g. prompt too long) is re-raised.
    """
    if isinstance(prompts, str) or not isinstance(prompts, list) or not prompts:
        raise ValueError("prompts must be a non-empty list")
    records = records_from_prompts(prompts, sampling_params or SamplingParams())
    if partition_size is None:
        num_workers = len(client.scheduler_info().get("workers", {}))
        partition_size = default_partition_size(len(records), num_workers)
    partitions = split(len(records), partition_size)
    outputs: list[RequestOutput | None] = [None] * len(records)
    progress = tqdm(total=len(records), desc="kaon batch", unit="prompt", disable=not use_tqdm)
    with progress:
        todo = list(range(len(partitions)))
        for result in _run_partitions(client, records, partitions, todo, engine_options):
            for index, output in zip(partitions[result.partition_index], result.outputs,
                                     strict=True):  # fmt: skip
                outputs[index] = output
            progress.update(len(result.outputs))
    assert all(output is not None for output in outputs)
    return outputs  # type: ignore[return-value]
