"""Print a Markdown table of `kaon bench serve --output-json` files, one row per load level.

Usage: python scripts/serve_table.py RESULT.json...
Columns: output tokens/s, TTFT and TPOT p50 / p99 (seconds), mean output tokens per request
(to check that every engine generated the full length) and the server's memory: the RSS peak
sampled during the level and the kernel's VmHWM (peak since start, model loading included), MiB.
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


def main(paths: list[str]) -> None:
    print("| server | concurrency | ok | output tok/s | TTFT p50 / p99 (s) | TPOT p50 / p99 (s) "
          "| mean output tokens | RSS MiB: level peak / VmHWM |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        for line in rows(Path(path)):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
