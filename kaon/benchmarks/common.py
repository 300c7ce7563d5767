"""Shared benchmark helpers: prompts, percentiles, peak RSS, machine facts, JSON and tables,
and the loop that drives an LLMEngine while sampling its KV cache usage.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

# Percentiles reported for every per-request series (TTFT, TPOT, end-to-end).
SUMMARY_PERCENTILES = (50.0, 90.0, 99.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) with linear interpolation, as ``numpy.percentile``.

    Raises:
        ValueError: for an empty ``values`` or ``q`` outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0  # fractional index into the sorted list
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, median, p90 and p99 of ``values`` (same unit as the input)."""
    summary = {"mean": sum(values) / len(values), "median": percentile(values, 50.0)}
    for q in SUMMARY_PERCENTILES[1:]:
        summary[f"p{q:g}"] = percentile(values, q)
    return summary


def random_prompts(
    num_prompts: int, input_len: int, vocab_size: int, special_ids: Sequence[int], seed: int
) -> list[list[int]]:
    """``num_prompts`` lists of ``input_len`` random token ids, special tokens excluded.

    Token ids, not text, so kaon and transformers see exactly the same input (their GGUF
    tokenizers differ on some whitespace runs).
    """
    if num_prompts < 1 or input_len < 1:
        raise ValueError(f"num_prompts and input_len must be >= 1, got {num_prompts}, {input_len}")
    excluded = set(special_ids)
    generator = random.Random(seed)
    prompts = []
    for _ in range(num_prompts):
        prompt: list[int] = []
        while len(prompt) < input_len:
            token_id = generator.randrange(vocab_size)
            if token_id not in excluded:
                prompt.append(token_id)
        prompts.append(prompt)
    return prompts


def sample_lengths(num: int, length: int, range_ratio: float, seed: int) -> list[int]:
    """``num`` lengths (tokens) drawn uniformly from the integers in
    [round(length * (1 - range_ratio)), round(length * (1 + range_ratio))], at least 1;
    ``range_ratio`` 0 gives ``length`` every time (vLLM's ``--random-range-ratio``).

    Raises:
        ValueError: for ``range_ratio`` outside [0, 1).
    """
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    low = max(1, round(length * (1 - range_ratio)))
    high = max(low, round(length * (1 + range_ratio)))
    generator = random.Random(seed)
    return [generator.randint(low, high) for _ in range(num)]


def read_dataset(path: str, num_prompts: int) -> list[str]:
    """Prompt texts from ``path``, repeated in order until there are ``num_prompts``.

    A ``.jsonl`` file holds one JSON object with a "prompt" field per line; any other file holds
    one prompt per line. Blank lines are skipped.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the line of a JSONL record without a string "prompt", or an empty file.
    """
    texts: list[str] = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            if not path.endswith(".jsonl"):
                texts.append(line.rstrip("\n"))
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"dataset {path} line {line_number}: no string 'prompt' field")
            texts.append(record["prompt"])
    if not texts:
        raise ValueError(f"dataset {path} holds no prompts")
    return [texts[index % len(texts)] for index in range(num_prompts)]


def reset_peak_rss() -> bool:
    """Restart the peak RSS count (Linux: VmHWM via /proc/self/clear_refs); False if unsupported.

    Lets the transformers baseline report its own peak after kaon's engine has been freed.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
            file.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident set size of this process, in MiB, since start or ``reset_peak_rss``.

    Reads VmHWM from /proc (resettable); elsewhere ru_maxrss from getrusage (KiB on Linux).
    """
    if os.path.exists("/proc/self/status"):
        return _proc_status_kib("VmHWM") / 2**10
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":
        return maxrss / 2**20  # bytes on macOS
    return maxrss / 2**10


def _proc_status_kib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return 0.0


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads and versions, for the report and the JSON."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch  # lazily: `kaon --help` must not pay torch's import

    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_model,
        "num_cores": os.cpu_count(),
        "num_usable_cores": len(usable) if usable is not None else os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def measure_memory_bandwidth(num_bytes: int = 2**30, num_repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: best of ``num_repeats`` ``torch.sum`` passes over a float32
    tensor of ``num_bytes``. A decode step reads every weight once, so this is its ceiling.
    """
    import torch

    data = torch.ones(num_bytes // 4, dtype=torch.float32)
    torch.sum(data)  # first touch: page faults are not bandwidth
    best = float("inf")
    for _ in range(num_repeats):
        start = time.perf_counter()
        torch.sum(data)
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best


@dataclass
class EngineRun:
    """What ``run_requests`` measured."""

    outputs: list[Any]  # one finished RequestOutput per prompt, in prompt order
    elapsed: float  # seconds from the first add_request to the last finish
    peak_kv_cache_usage: float  # fraction of KV cache blocks held, max over steps
    num_steps: int  # engine steps taken


def run_requests(
    engine: Any,
    prompts: Sequence[list[int] | str],
    sampling_params: Any | Sequence[Any],
    request_prefix: str,
    progress_desc: str | None = None,
) -> EngineRun:
    """Queue every prompt on an LLMEngine at once and step it until all finish.

    ``sampling_params`` is one SamplingParams for all, or a list with one per prompt.
    Drives ``add_request``/``step`` directly (not ``LLM.generate``) to read ``engine.stats()``
    after every step. ``progress_desc`` None hides the progress bar.

    Raises:
        ValueError: from ``add_request`` for a bad prompt.
        RuntimeError: if the engine runs dry before every request finished.
    """
    request_ids = [f"{request_prefix}-{index}" for index in range(len(prompts))]
    finished: dict[str, Any] = {}
    peak_usage, num_steps = 0.0, 0
    progress = tqdm(total=len(prompts), desc=progress_desc, unit="req", disable=not progress_desc)
    start = time.perf_counter()
    if not isinstance(sampling_params, list | tuple):
        sampling_params = [sampling_params] * len(prompts)
    for request_id, prompt, params in zip(request_ids, prompts, sampling_params, strict=True):
        engine.add_request(request_id, prompt, params)
    with progress:
        while len(finished) < len(request_ids) and engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    finished[output.request_id] = output
                    progress.update(1)
            num_steps += 1
            # Sampled after the step: blocks of requests that finished in it are already freed.
            peak_usage = max(peak_usage, engine.stats().kv_cache_usage)
    elapsed = time.perf_counter() - start
    if len(finished) < len(request_ids):
        raise RuntimeError(f"only {len(finished)} of {len(request_ids)} requests finished")
    outputs = [finished[request_id] for request_id in request_ids]
    return EngineRun(outputs, elapsed, peak_usage, num_steps)


def request_figures(output: Any) -> dict[str, Any]:
    """Raw per-request figures of a finished RequestOutput (times in seconds)."""
    metrics = output.metrics
    return {
        "prompt_len": len(output.prompt_token_ids),
        "output_len": len(output.outputs[0].token_ids),
        "ttft": metrics.time_to_first_token,
        "tpot": metrics.time_per_output_token,
        "e2e": metrics.e2e_latency,
    }


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[object]], num_label_columns: int = 1
) -> None:
    """Print an aligned text table: the first ``num_label_columns`` columns left-aligned, the
    rest right-aligned; floats get 4 significant digits, None prints as '-'."""
    cells = [[_format_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))

    def line(row: Sequence[str]) -> str:
        padded = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        for column in range(num_label_columns):
            padded[column] = row[column].ljust(widths[column])
        return "   ".join(padded).rstrip()

    print(f"\n{title}\n{rule}\n{line([str(h) for h in header])}\n{rule}")
    for row in cells:
        print(line(row))
    print(rule)


def _format_cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def print_machine(machine: dict[str, Any]) -> None:
    print(
        f"machine: {machine['cpu_model']}, {machine['num_usable_cores']}/{machine['num_cores']} "
        f"cores usable, torch {machine['torch_version']}, "
        f"{machine['torch_num_threads']} torch threads"
    )


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def settings(args, model_path: str, names: tuple[str, ...]) -> dict:
    """The run's settings for --output-json: the model, the named CLI options, engine options."""
    from kaon.config import options_from_cli

    return {
        "model_path": model_path,
        **{name: getattr(args, name) for name in names},
        "engine_options": options_from_cli(args),
    }
