"""Which float32 GEMM path torch takes on this CPU, and how fast each one is at decode shapes.

Usage: python scripts/bench_gemm_paths.py [--repeats N] [--json FILE]

Times x [M, 576] times a float32 weight through three paths, for M in 1, 8 and 32:
  mm        ``torch.mm(x, w_t)`` with ``w_t`` [in, out] contiguous (kaon.layers.linear today);
  linear    ``F.linear(x, w)`` with ``w`` [out, in] contiguous (the nn.Linear layout);
  onednn    ``torch.ops.mkldnn._linear_pointwise`` on a weight packed once by
            ``torch.ops.mkldnn._reorder_linear_weight`` (the pair torch's inductor uses).
Shapes: SmolLM2-135M's MLP up projection [576, 1536], its LM head [576, 49152], and one whole
decode step: every projection of the 30 layers plus the LM head, each with its own weight
(538 MB in all, so nothing stays in cache), timed back to back. The step row also reports the
read bandwidth reached, weight bytes / time, against ``torch.sum`` over the same weights (the
bandwidth a perfect GEMV would reach). Fastest of ``--repeats`` timings, milliseconds.

It also prints the BLAS library torch was built with, the CPU vendor, and the first lines of
MKL_VERBOSE / ONEDNN_VERBOSE output for one call, which name the instruction set each library
dispatched to. Run it under different MKL_* environment variables to compare (see
docs/findings-gemm-amd.md). Shared machines give noisy absolute times: compare the paths within
one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

HIDDEN, INTERMEDIATE, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152
LAYER_SHAPES = [  # (in, out) of each projection of one SmolLM2-135M layer
    (HIDDEN, HIDDEN),  # q
    (HIDDEN, KV),  # k
    (HIDDEN, KV),  # v
    (HIDDEN, HIDDEN),  # o
    (HIDDEN, INTERMEDIATE),  # gate
    (HIDDEN, INTERMEDIATE),  # up
    (INTERMEDIATE, HIDDEN),  # down
]


def _weights(shapes: list[tuple[int, int]]) -> dict[str, list[torch.Tensor]]:
    """One weight per shape in each layout the paths need ([in, out], [out, in], oneDNN-packed)."""
    torch.manual_seed(0)
    out_in = [torch.randn(n_out, n_in) * 0.02 for n_in, n_out in shapes]
    return {
        "linear": out_in,
        "mm": [w.t().contiguous() for w in out_in],
        "onednn": [torch.ops.mkldnn._reorder_linear_weight(w) for w in out_in],
    }


def _apply(
    path: str, x_by_in: dict[int, torch.Tensor], weights: list[torch.Tensor], shapes
) -> None:
    for (n_in, _), w in zip(shapes, weights, strict=True):
        x = x_by_in[n_in]
        if path == "mm":
            torch.mm(x, w)
        elif path == "linear":
            F.linear(x, w)
        else:
            torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [None], "")


def _time(fn, repeats: int) -> float:
    """Fastest wall time of ``fn()`` in ms, after two warm-up calls (the minimum, not the
    median: on a shared machine most timings include time slices lost to other jobs)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def _verbose_lines(env_name: str, marker: str) -> list[str]:
    """Lines of a child's ``env_name=1`` output containing ``marker`` for one M=1 product."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "x = torch.randn(1, 576); w = torch.randn(1536, 576)\n"
        "F.linear(x, w); torch.mm(x, w.t().contiguous())\n"
        "p = torch.ops.mkldnn._reorder_linear_weight(w)\n"
        "torch.ops.mkldnn._linear_pointwise(x, p, None, 'none', [None], '')\n"
    )
    env = dict(os.environ, **{env_name: "1"})
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    lines = (done.stdout + done.stderr).splitlines()
    return [line[:220] for line in lines if marker in line][:6]


def _cpu_vendor() -> str:
    """The CPU's vendor_id and model name from /proc/cpuinfo."""
    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "model name"):
                    found.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return f"{found.get('vendor_id', '?')} {found.get('model name', '?')}"


def _case(label: str, shapes, repeats: int, paths: list[str]) -> list[dict]:
    """Time every path at M = 1, 8, 32 on one set of weights; print and return one row per M."""
    weights = _weights(shapes)
    num_bytes = sum(a * b * 4 for a, b in shapes)
    flat = torch.cat([w.reshape(-1) for w in weights["linear"]])
    sum_ms = _time(partial(torch.sum, flat), repeats)
    rows = []
    for m in (1, 8, 32):
        x_by_in = {n: torch.randn(m, n) for n in {s[0] for s in shapes}}
        ms = {p: _time(partial(_apply, p, x_by_in, weights[p], shapes), repeats) for p in paths}
        gbs = num_bytes / min(ms.values()) / 1e6
        rows.append(
            {"weights": label, "M": m, **{f"{p}_ms": ms[p] for p in paths}, "sum_ms": sum_ms}
            | {"best_GB_s": gbs, "sum_GB_s": num_bytes / sum_ms / 1e6}
        )
        cells = " | ".join(f"{ms[p]:.3f}" for p in paths)
        print(f"| {label} | {m} | {cells} | {sum_ms:.3f} | {gbs:.1f} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run every measurement, print a Markdown table, return the figures (ms and GB/s)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--no-verbose", action="store_true", help="skip the *_VERBOSE children")
    parser.add_argument("--cases", default="up,head,step", help="subset of up,head,step")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    blas = [ln.strip() for ln in torch.__config__.show().splitlines() if "Math Kernel" in ln]
    print(f"CPU: {_cpu_vendor()}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(
        f"BLAS: {blas[0] if blas else 'not MKL'}; "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("MKL_", "ONEDNN_", "DNNL_", "OMP_", "LD_PRELOAD"))
    }
    print(f"environment: {env or 'no MKL_/ONEDNN_/OMP_ variables'}")
    if not args.no_verbose:
        for line in _verbose_lines("MKL_VERBOSE", "MKL_VERBOSE"):
            print("  " + line)
        for line in _verbose_lines("ONEDNN_VERBOSE", "isa:") + _verbose_lines(
            "ONEDNN_VERBOSE", "primitive,exec"
        ):
            print("  " + line)

    results: dict = {"env": env, "rows": []}
    paths = ["mm", "linear", "onednn"]
    cases = [
        ("up [576,1536]", [(HIDDEN, INTERMEDIATE)], args.repeats * 10),
        ("LM head [576,49152]", [(HIDDEN, VOCAB)], args.repeats),
        (
            "decode step (30 layers + head)",
            LAYER_SHAPES * LAYERS + [(HIDDEN, VOCAB)],
            args.repeats // 2 or 1,
        ),
    ]
    print(
        "\n| weights | M | "
        + " | ".join(f"{p} ms" for p in paths)
        + " | sum over weights ms | best GB/s |"
    )
    print("|---|---|" + "---|" * (len(paths) + 2))
    wanted = args.cases.split(",")
    cases = [case for key, case in zip(("up", "head", "step"), cases, strict=True) if key in wanted]
    for label, shapes, repeats in cases:
        results["rows"] += _case(label, shapes, repeats, paths)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
