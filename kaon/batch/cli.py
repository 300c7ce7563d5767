"""``kaon batch INPUT.jsonl OUTPUT.jsonl``: offline generation over a Dask cluster.

    kaon batch prompts.jsonl out.jsonl --local-workers 2 --max-tokens 64
    kaon batch prompts.jsonl out.jsonl --scheduler tcp://10.0.0.1:8786 --num-threads 16

Input and output line formats: ``kaon.batch.records``. Sampling flags are the defaults of every
line; a line's own fields override them. Engine flags configure the engine of each worker.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

logger = logging.getLogger("kaon")


def add_batch_args(
    parser: argparse.ArgumentParser,
    add_engine_args: Callable[[argparse.ArgumentParser], None],
    add_sampling_args: Callable[[argparse.ArgumentParser], None],
    sampling_params_from_args: Callable[[argparse.Namespace], object],
) -> None:
    """Add the ``kaon batch`` arguments; the engine and sampling flags come from kaon.cli."""
    from kaon.batch.job import DEFAULT_PARTITION_SIZE

    parser.add_argument("input", help="JSONL file: one {'id', 'prompt' | 'messages', ...} per line")
    parser.add_argument("output", help="JSONL file written in input order (resumable)")
    group = parser.add_argument_group("cluster")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    where.add_argument(
        "--local-workers", type=int, default=None,
        help="start a local Dask cluster of this many worker processes (default: 1)",
    )  # fmt: skip
    group.add_argument(
        "--partition-size", type=int, default=DEFAULT_PARTITION_SIZE,
        help=f"input lines per task (default {DEFAULT_PARTITION_SIZE})",
    )  # fmt: skip
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_args(parser)
    add_sampling_args(parser)
    parser.set_defaults(
        handler=lambda args: run_batch_command(args, sampling_params_from_args(args))
    )


def run_batch_command(args: argparse.Namespace, default_params) -> int:
    """Run the job described by parsed ``kaon batch`` arguments; print a one-line summary.

    Raises:
        ValueError: for a bad input line or option (kaon.cli prints it and exits with 2).
    """
    from kaon.batch.cluster import dask_client, threads_per_engine
    from kaon.batch.job import run_batch_job
    from kaon.batch.records import read_records
    from kaon.config import EngineConfig, options_from_cli

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO is per-worker noise
    engine_options = {k: v for k, v in options_from_cli(args).items() if v is not None}
    if engine_options.get("data_parallel_size", 1) != 1:
        raise ValueError("data_parallel_size: use --local-workers or more Dask workers instead")
    engine_options.pop("data_parallel_size", None)
    local_workers = args.local_workers
    if args.scheduler is None and local_workers is None:
        local_workers = 1
    if local_workers is not None and "num_threads" not in engine_options:
        engine_options["num_threads"] = threads_per_engine(local_workers)
    # Bad input lines and engine options fail before any cluster starts.
    read_records(args.input, default_params)
    EngineConfig.from_options(**engine_options)
    with dask_client(args.scheduler, local_workers) as client:
        report = run_batch_job(
            client, args.input, args.output, default_params, engine_options,
            partition_size=args.partition_size, use_tqdm=not args.no_progress,
        )  # fmt: skip
    logger.info(
        "kaon batch: %d records in %d partitions (%d run, %d already written) -> %s",
        report.num_records, report.num_partitions, len(report.executed_partitions),
        len(report.skipped_partitions), args.output,
    )  # fmt: skip
    return 0
