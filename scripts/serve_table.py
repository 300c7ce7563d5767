"""Markdown tables of benchmark results: per load level, or one summary row per server.

Usage: python scripts/serve_table.py RESULT.json...
    One row per load level of each `kaon bench serve --output-json` file. Columns: output
    tokens/s, TTFT and TPOT p50 / p99 (seconds), mean output tokens per request (to check that
    every engine generated the full length) and the server's memory: the RSS peak sampled
    during the level and the kernel's VmHWM (peak since start, model loading included), MiB.
Usage: python scripts/serve_table.py --summary OUT_DIR
    The peers table of scripts/bench_peers.sh (see ``summary``), from the files it wrote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pair(figures: dict, key: str, digits: int) -> str:
    """'p50 / p99' of one latency figure, or '-' when no request completed."""
    if not figures.get(key):
        return "-"
    return f"{figures[key]['p50']:.{digits}f} / {figures[key]['p99']:.{digits}f}"


def rows(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    lines = []
    for level in result["levels"]:
        f = level["figures"]
        memory = level.get("server_memory") or {}
        completed = f["num_completed"]
        mean_out = f["num_output_tokens"] / completed if completed else 0.0
        rss = f"{memory.get('peak_rss_mib', 0):.0f} / {memory.get('vm_hwm_mib', 0):.0f}"

        lines.append(
            f"| {path.stem} | {level['load']:g} | {completed}/{f['num_requests']} "
            f"| {f['output_tokens_per_s']:.1f} | {_pair(f, 'ttft_s', 2)} | {_pair(f, 'tpot_s', 3)} "
            f"| {mean_out:.0f} | {rss} |"
        )
    return lines


def _load(path: Path) -> dict | list | None:
    """The JSON in ``path``, or None when the file is missing or not JSON (a skipped step)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _level(serve: dict | None, load: float) -> dict | None:
    """The figures of one load level of a `kaon bench serve` result (None when absent)."""
    for level in (serve or {}).get("levels", []):
        if level["load"] == load and level["figures"].get("num_completed"):
            return level["figures"]
    return None


def _output_tok_s(serve: dict | None, load: float) -> float | None:
    figures = _level(serve, load)
    return figures["output_tokens_per_s"] if figures else None


def _peak_rss_mib(meta: dict, serve: dict | None) -> float | None:
    """Peak RSS of the server's process tree (bench_peers' poller), else the largest level peak
    `kaon bench serve --server-pid` sampled (the main process only)."""
    if meta.get("peak_rss_tree_mib"):
        return meta["peak_rss_tree_mib"]
    peaks = [
        (level.get("server_memory") or {}).get("peak_rss_mib")
        for level in (serve or {}).get("levels", [])
    ]
    peaks = [p for p in peaks if p]
    return max(peaks) if peaks else None


def _single_stream(serve: dict | None, latency: dict | None, llama_bench: list | None):
    """(served decode tok/s = 1 / TPOT p50 at one stream, offline figure, its source)."""
    figures = _level(serve, 1)
    served = 1.0 / figures["tpot_s"]["p50"] if figures and figures.get("tpot_s") else None
    if latency and "kaon" in latency:
        return served, latency["kaon"]["decode_tokens_per_s"], "kaon bench latency"
    for row in llama_bench or []:
        if row.get("n_prompt") == 0 and row.get("n_gen"):
            return served, row["avg_ts"], f"llama-bench tg{row['n_gen']}"
    return served, None, ""


def _prefill(prefill: dict | None, llama_bench: list | None) -> tuple[float | None, float | None]:
    """(served prefill tokens/s = prompt tokens / TTFT p50 of the 512-token requests,
    llama-bench pp tokens/s)."""
    served = None
    figures = _level(prefill, 1)
    if figures and figures.get("ttft_s"):
        prompt_len = prefill["settings"].get("input_len", 512)
        served = prompt_len / figures["ttft_s"]["p50"]
    bench = next(
        (row["avg_ts"] for row in llama_bench or [] if row.get("n_gen") == 0 and row["n_prompt"]),
        None,
    )
    return served, bench


def _offline(offline: dict | None) -> float | None:
    """Output tok/s of `kaon bench throughput` (key "kaon") or scripts/vllm_offline.py."""
    if not offline:
        return None
    return offline.get("kaon", offline).get("output_tokens_per_s")


FLOAT32_ENGINES = ("kaon", "llama-f32", "vllm")  # rows whose decode is compared to the floor

# Issue 12's targets: (numerator engine, denominator engine, figure, target); engine names as in
# scripts/bench_peers.sh (kaon-quant: the GGUF's own quantized weights).
TARGETS = (
    ("kaon-quant", "llama-q4", "tok1", ">= 1.2"),
    ("kaon", "llama-f32", "tok1", ">= 1.0"),
    ("kaon", "llama-f32", "tok8", ">= 1.2"),
    ("kaon", "llama-f32", "tok32", ">= 1.2"),
    ("kaon-quant", "llama-q4", "tok8", ">= 1.2"),
    ("kaon-quant", "llama-q4", "tok32", ">= 1.2"),
    ("kaon", "vllm", "tok8", ">= 1.5"),
    ("kaon", "vllm", "tok32", ">= 1.5"),
    ("kaon", "llama-f32", "ttft32", "<= 1.0"),
    ("kaon", "vllm", "ttft32", "<= 1.0"),
    ("kaon", "vllm", "offline", ">= 1.5"),
    ("kaon", "llama-f32", "prefill", ">= 1.0"),
    ("kaon-quant", "llama-q4", "prefill", ">= 1.0"),
    ("kaon", "llama-f32", "rss", "<= 2.0"),
    ("kaon-quant", "llama-q4", "rss", "<= 2.0"),
)
FIGURE_NAMES = {
    "tok1": "1 stream output tok/s",
    "tok8": "8 streams output tok/s",
    "tok32": "32 streams output tok/s",
    "ttft32": "TTFT p99 at 32 streams",
    "offline": "offline 64 x 128 tok/s",
    "prefill": "prefill 512 tok/s (served)",
    "rss": "peak RSS",
}


def _figures(out_dir: Path, name: str) -> dict:
    """The headline figures of one server (None where absent), keyed as in TARGETS."""
    serve = _load(out_dir / f"{name}.json")
    at32 = _level(serve, 32)
    served_prefill, _ = _prefill(_load(out_dir / f"{name}-prefill.json"), None)
    return {
        "tok1": _output_tok_s(serve, 1),
        "tok8": _output_tok_s(serve, 8),
        "tok32": _output_tok_s(serve, 32),
        "ttft32": at32["ttft_s"]["p99"] if at32 and at32.get("ttft_s") else None,
        "offline": _offline(_load(out_dir / f"{name}-offline.json")),
        "prefill": served_prefill,
        "rss": _peak_rss_mib(_load(out_dir / f"{name}-meta.json") or {}, serve),
    }


def ratios(out_dir: Path) -> list[str]:
    """Markdown list of issue 12's target ratios that both servers' figures allow."""
    lines = []
    for top, bottom, key, target in TARGETS:
        a, b = _figures(out_dir, top)[key], _figures(out_dir, bottom)[key]
        if a and b:
            lines.append(f"- {FIGURE_NAMES[key]}, {top} / {bottom}: {a / b:.2f} (target {target})")
    return lines


def summary(out_dir: Path) -> list[str]:
    """The peers table from the files scripts/bench_peers.sh wrote in ``out_dir``.

    Per server NAME (the order of ``engines.txt``, else alphabetical): NAME.json (`kaon bench
    serve`, levels 1, 8, 32), NAME-prefill.json (the 512-token prompt run), NAME-meta.json
    (label, start_to_health_s, peak_rss_tree_mib, note), NAME-offline.json (`kaon bench
    throughput` or vllm_offline.py), NAME-latency.json (`kaon bench latency`),
    NAME-llama-bench.json (llama-bench -o json); machine.json (scripts/peer_probe.py machine).
    A missing file gives "-" cells; a server with none of them gives no row.
    Returns the lines of the Markdown text (header lines, then the table, then notes).
    """
    machine = _load(out_dir / "machine.json") or {}
    listed = out_dir / "engines.txt"
    order = (
        listed.read_text().split()
        if listed.exists()
        else sorted(p.stem[: -len("-meta")] for p in out_dir.glob("*-meta.json"))
    )
    bandwidth = None
    amx = " (AMX denied by the VM: llama.cpp run with --no-repack)"
    lines = [
        f"Machine: {machine.get('cpu_model', '?')} ({machine.get('vendor', '?')}), "
        f"{machine.get('num_cpus', '?')} CPUs, flags: {' '.join(machine.get('simd_flags', []))}"
        + (amx if machine.get("amx_denied") else "")
    ]
    header = (
        "| server | 1 stream tok/s | 8 streams | 32 streams | TTFT p99 at 32 | peak RSS "
        "| start to /health | decode 1 stream: served / offline tok/s | prefill 512: served / "
        "llama-bench tok/s | offline tok/s (see Settings) |"
    )
    table = [header, "|" + "---|" * 10]
    notes = []
    for name in order:
        meta = _load(out_dir / f"{name}-meta.json") or {}
        serve = _load(out_dir / f"{name}.json")
        latency = _load(out_dir / f"{name}-latency.json")
        llama_bench = _load(out_dir / f"{name}-llama-bench.json")
        if latency and latency.get("floor") and bandwidth is None:
            bandwidth = latency["floor"]
        if not (meta or serve):
            continue
        if meta.get("note"):
            notes.append(f"- {meta.get('label', name)}: {meta['note']}")
        floor = (bandwidth or {}).get("floor_tokens_per_s")
        at32 = _level(serve, 32)
        ttft99 = at32["ttft_s"]["p99"] if at32 and at32.get("ttft_s") else None
        rss = _peak_rss_mib(meta, serve)
        served, offline, source = _single_stream(serve, latency, llama_bench)
        pre_served, pre_bench = _prefill(_load(out_dir / f"{name}-prefill.json"), llama_bench)
        decode = f"{_fmt(served)} / {_fmt(offline)}" + (f" ({source})" if offline else "")
        if name in FLOAT32_ENGINES and floor and (offline or served):
            decode += f", {(offline or served) / floor:.2f} of floor"
        table.append(
            f"| {meta.get('label', name)} | {_fmt(_output_tok_s(serve, 1))} "
            f"| {_fmt(_output_tok_s(serve, 8))} | {_fmt(_output_tok_s(serve, 32))} "
            f"| {_fmt(ttft99, 2, ' s')} | {_fmt(rss / 1024 if rss else None, 2, ' GB')} "
            f"| {_fmt(meta.get('start_to_health_s'), 1, ' s')} | {decode} "
            f"| {_fmt(pre_served, 0)} / {_fmt(pre_bench, 0)} "
            f"| {_fmt(_offline(_load(out_dir / f'{name}-offline.json')))} |"
        )
    if bandwidth:
        lines.append(
            f"Measured read bandwidth {bandwidth['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
            f"(kaon bench latency); float32 floor "
            f"{bandwidth['floor_tokens_per_s']:.1f} tok/s for "
            f"{bandwidth['weight_bytes_per_step'] / 1e6:.0f} MB of weights per step."
        )
    settings = out_dir / "settings.txt"
    if settings.exists():
        lines.append(f"Settings: {settings.read_text().strip()}")
    lines.append(f"Date: {machine.get('date', '?')}")
    targets = ratios(out_dir)
    if targets:
        notes = [*notes, "", "Issue 12's targets, same run:", *targets]
    return [*lines, "", *table, *([""] + notes if notes else [])]


def main(paths: list[str]) -> None:
    if paths[:1] == ["--summary"]:
        print("\n".join(summary(Path(paths[1]))))
        return
    print("| server | concurrency | ok | output tok/s | TTFT p50 / p99 (s) | TPOT p50 / p99 (s) "
          "| mean output tokens | RSS MiB: level peak / VmHWM |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        for line in rows(Path(path)):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
