"""Shared by the eval tasks: reading JSONL data sets, the shipped sets, speed figures, report."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from kaon.benchmarks.common import EngineRun, request_figures, summarize


def packaged_data(name: str) -> str:
    """Path of a data set shipped in ``kaon/eval/data`` (e.g. ``"qa.jsonl"``)."""
    return str(resources.files("kaon.eval") / "data" / name)


def read_jsonl(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per non-blank line (the first ``limit`` only).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the line that is not a JSON object, or for an empty file.
    """
    records = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"data {path} line {line_number}: not JSON ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"data {path} line {line_number}: not a JSON object")
            record["_line"] = line_number
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise ValueError(f"data {path} holds no records")
    return records


def speed_figures(run: EngineRun) -> dict[str, Any]:
    """Throughput (requests/s, prompt and output tokens/s over the whole run) and per-request
    latency summaries (TTFT, end-to-end; seconds) of one ``run_requests`` call."""
    per_request = [request_figures(output) for output in run.outputs]
    num_prompt = sum(r["prompt_len"] for r in per_request)
    num_output = sum(r["output_len"] for r in per_request)
    return {
        "num_requests": len(per_request),
        "elapsed_s": run.elapsed,
        "requests_per_s": len(per_request) / run.elapsed,
        "prompt_tokens_per_s": num_prompt / run.elapsed,
        "output_tokens_per_s": num_output / run.elapsed,
        "num_prompt_tokens": num_prompt,
        "num_output_tokens": num_output,
        "ttft_s": summarize([r["ttft"] for r in per_request]),
        "e2e_s": summarize([r["e2e"] for r in per_request]),
    }


def add_common_args(parser: Any, default_data: str) -> None:
    parser.add_argument(
        "--data",
        default=None,
        help=f"JSONL file (default: the shipped kaon/eval/data/{default_data})",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument("--output-json", default=None, help="write settings, scores and items")


def speed_rows(speed: dict[str, Any]) -> list[list[object]]:
    """Table rows of ``speed_figures``."""
    return [
        ["requests/s", speed["requests_per_s"]],
        ["prompt tokens/s", speed["prompt_tokens_per_s"]],
        ["output tokens/s", speed["output_tokens_per_s"]],
        ["TTFT p50 / p99 (s)", f"{speed['ttft_s']['median']:.4g} / {speed['ttft_s']['p99']:.4g}"],
        ["e2e p50 / p99 (s)", f"{speed['e2e_s']['median']:.4g} / {speed['e2e_s']['p99']:.4g}"],
        ["elapsed (s)", speed["elapsed_s"]],
    ]
