"""Wires ``kaon bench throughput | latency | serve | structured`` into the ``kaon`` command.

Engine flags come from ``add_cli_args``; ``--seed`` is the engine's and also seeds the random
prompts, so one flag makes the whole run reproducible.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from kaon.benchmarks.latency import add_latency_args, run_latency
from kaon.benchmarks.serve import add_serve_args, run_serve
from kaon.benchmarks.structured import add_structured_args, run_structured
from kaon.benchmarks.throughput import add_throughput_args, run_throughput
from kaon.dependencies import require


def _check_dependencies(args: argparse.Namespace) -> None:
    """Before any work: ``--compare-hf`` needs transformers (the ``hf`` extra)."""
    if args.compare_hf:
        require("transformers", "--compare-hf")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument(
        "--compare-hf",
        action="store_true",
        help="also run Hugging Face transformers (float32, same GGUF, same token ids) in this run",
    )
    group.add_argument(
        "--output-json", default=None, help="write the settings and all raw figures to this file"
    )


def add_bench_commands(
    bench: argparse.ArgumentParser, add_cli_args: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add the ``throughput``, ``latency``, ``serve`` and ``structured`` subcommands."""
    commands = bench.add_subparsers(dest="bench_command", required=True)
    throughput = commands.add_parser(
        "throughput", help="offline: many requests at once; requests/s and tokens/s"
    )
    add_throughput_args(throughput)
    throughput.set_defaults(handler=run_throughput)
    latency = commands.add_parser(
        "latency", help="one request at a time: TTFT, TPOT, end-to-end, memory-bandwidth floor"
    )
    add_latency_args(latency)
    latency.set_defaults(handler=run_latency)
    for parser in (throughput, latency):
        parser.set_defaults(check_dependencies=_check_dependencies)
        _add_output_args(parser)
        add_cli_args(parser)
    serve = commands.add_parser(
        "serve", help="load generator against an OpenAI-compatible server: TTFT, TPOT, goodput"
    )
    add_serve_args(serve)
    serve.add_argument(
        "--output-json", default=None, help="write the settings and all raw figures to this file"
    )
    serve.set_defaults(handler=run_serve)
    structured = commands.add_parser(
        "structured", help="grammar compile times of the structured-output test schemas"
    )
    add_structured_args(structured)
    structured.set_defaults(handler=run_structured)
