"""PNG plot of ``kaon bench serve`` over several load levels: throughput and p50/p99 latency
against load (concurrency or request rate). matplotlib is imported lazily, with the Agg backend
(no display needed)."""

from __future__ import annotations

from typing import Any


def plot_levels(levels: list[dict[str, Any]], load_label: str, title: str, path: str) -> None:
    """Write a three-panel PNG: output tokens/s and requests/s; TTFT p50/p99; TPOT p50/p99.

    ``levels`` are the per-level dicts of the JSON report ("load" and "figures" keys); levels
    without a figure (every request failed) are left out of that panel.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [level["load"] for level in levels]
    figures = [level["figures"] for level in levels]
    fig, (ax_tput, ax_ttft, ax_tpot) = plt.subplots(1, 3, figsize=(15, 4.5))
    ax_tput.plot(loads, [f["output_tokens_per_s"] for f in figures], "o-", label="output tok/s")
    ax_tput.set_ylabel("output tokens/s")
    ax_req = ax_tput.twinx()
    ax_req.plot(loads, [f["requests_per_s"] for f in figures], "s--", color="tab:orange")
    ax_req.set_ylabel("requests/s", color="tab:orange")
    ax_tput.set_title("throughput")
    for axis, key, name in ((ax_ttft, "ttft_s", "TTFT"), (ax_tpot, "tpot_s", "TPOT")):
        for quantile, style in (("p50", "o-"), ("p99", "^--")):
            points = [(x, f[key][quantile]) for x, f in zip(loads, figures, strict=True) if f[key]]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, style, label=f"{name} {quantile}")
        axis.set_ylabel("seconds")
        axis.set_title(name)
        if axis.lines:
            axis.legend()
    for axis in (ax_tput, ax_ttft, ax_tpot):
        if min(loads) > 0 and max(loads) / min(loads) >= 8:
            axis.set_xscale("log", base=2)
        axis.set_xlabel(load_label)
        axis.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
