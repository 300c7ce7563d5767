"""``kaon bench serve`` reporting: the greedy-output oracle (``--verify``), the server's memory
(``--server-pid``) and the final table."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from kaon.benchmarks.common import print_machine, print_table

MEMORY_SAMPLE_INTERVAL_S = 0.2


def first_difference(expected: str, actual: str) -> int | None:
    """Index of the first character where the two texts differ; None when equal."""
    if expected == actual:
        return None
    for index, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return index
    return min(len(expected), len(actual))


def compare_to_reference(
    expected: Sequence[dict[str, Any]], actual: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Compare each response under load with the same prompt's response at concurrency 1.

    Both are request records ("index", "success", "text"); a pair is checked when both
    succeeded. Returns counts and, per differing response, the texts and the first differing
    character.
    """
    mismatches, num_checked = [], 0
    for ref, got in zip(expected, actual, strict=True):
        if not (ref["success"] and got["success"]):
            continue
        num_checked += 1
        position = first_difference(ref["text"], got["text"])
        if position is not None:
            mismatches.append(
                {
                    "index": got["index"],
                    "first_difference": position,
                    "expected": ref["text"],
                    "actual": got["text"],
                }
            )
    return {"num_checked": num_checked, "num_mismatches": len(mismatches), "mismatches": mismatches}


def _proc_status_kib(pid: int) -> dict[str, float]:
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = float(rest.split()[0])
    return values


class _MemorySampler:
    """Samples a process's VmRSS every 0.2 s until stopped (Linux /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib = pid, 0.0
        self.task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            try:
                self.peak_kib = max(self.peak_kib, _proc_status_kib(self.pid).get("VmRSS", 0.0))
            except OSError:  # the process exited: keep the peak seen so far
                return
            await asyncio.sleep(MEMORY_SAMPLE_INTERVAL_S)

    async def stop(self) -> dict[str, float]:
        """{"peak_rss_mib": sampled peak during the level, "vm_hwm_mib": the kernel's
        high-water mark of the process since it started (0 if it has exited)}, in MiB."""
        self.task.cancel()
        try:
            status = _proc_status_kib(self.pid)
        except OSError:
            status = {}
        peak = max(self.peak_kib, status.get("VmRSS", 0.0))
        return {"peak_rss_mib": peak / 1024, "vm_hwm_mib": status.get("VmHWM", 0.0) / 1024}


def server_memory(pid: int | None) -> _MemorySampler | None:
    """A running memory sampler of ``pid``, or None when no pid was given.

    Raises:
        FileNotFoundError: if no process ``pid`` exists (or no /proc).
    """
    if pid is None:
        return None
    _proc_status_kib(pid)  # fail early on a wrong pid
    return _MemorySampler(pid)


def _quantiles(series: dict[str, float] | None) -> list[float | None]:
    if series is None:
        return [None, None, None]
    return [series["p50"], series["p90"], series["p99"]]


def print_report(result: dict[str, Any]) -> None:
    """Print one table row per load level, then the oracle's and the plot's lines."""
    settings = result["settings"]
    print_machine(result["machine"])
    rows = []
    for level in result["levels"]:
        f = level["figures"]
        memory = level.get("server_memory") or {}
        rows.append(
            [
                f"{level['load']:g}",
                f"{f['num_completed']}/{f['num_requests']}",
                f["requests_per_s"],
                f["output_tokens_per_s"],
                f["goodput_requests_per_s"],
                *_quantiles(f["ttft_s"]),
                *_quantiles(f["tpot_s"]),
                *_quantiles(f["itl_s"])[::2],
                *_quantiles(f["e2e_s"])[::2],
                memory.get("vm_hwm_mib"),
            ]
        )
    header = ["load", "ok", "req/s", "out tok/s", "goodput", "TTFT p50", "p90", "p99"]
    header += ["TPOT p50", "p90", "p99", "ITL p50", "p99", "e2e p50", "p99", "server MiB"]
    sources = {level["figures"]["output_tokens_source"] for level in result["levels"]}
    title = (
        f"serve: {settings['base_url']} ({settings['model']}), {result['load_kind']}, "
        f"{settings['endpoint']}, max_tokens {settings['output_len']}; latencies in seconds; "
        f"output tokens counted from: {', '.join(sorted(s or 'none' for s in sources))}"
    )
    print_table(title, header, rows)
    slos = (settings["slo_ttft"], settings["slo_tpot"], settings["slo_e2e"])
    if any(slo is not None for slo in slos):
        print(
            f"goodput: requests/s meeting TTFT <= {settings['slo_ttft']} s, "
            f"TPOT <= {settings['slo_tpot']} s, e2e <= {settings['slo_e2e']} s"
        )
    for level in result["levels"]:
        verify = level.get("verify")
        if verify is not None:
            print(
                f"verify at load {level['load']:g}: {verify['num_mismatches']} of "
                f"{verify['num_checked']} greedy responses differ from concurrency 1"
            )
    if result.get("plot"):
        print(f"plot: {result['plot']}")
