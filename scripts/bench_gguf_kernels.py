"""Milliseconds per product: the GGUF block kernels (AVX2 and scalar) against a float32 torch.mm,
on SmolLM2-135M's shapes (random blocks), in one process.

    python scripts/bench_gguf_kernels.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from kaon.kernels.gguf_matmul import KERNEL_TYPES, load_kernels

SHAPES = [("Q4_1", 1536, 576), ("Q4_1", 576, 1536), ("Q8_0", 49152, 576)]


def milliseconds(fn, args: tuple, iters: int) -> float:
    fn(*args)
    start = time.perf_counter()
    for _ in range(iters):
        fn(*args)
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = load_kernels()
    assert kernels is not None, "the C++ GGUF kernels did not build"
    rng = np.random.default_rng(0)
    print("| type | N x K | M | AVX2 ms | scalar ms | float32 mm ms |")
    print("|---|---|---|---|---|---|")
    for name, n, k in SHAPES:
        type_id, block, nbytes = KERNEL_TYPES[name]
        raw = rng.integers(0, 256, size=(n * k // block, nbytes), dtype=np.uint8)
        raw[:, 0:2] = np.full((len(raw), 1), 0.01, np.float16).view(np.uint8)
        blocks = torch.from_numpy(raw.reshape(n, -1))
        weight_t = torch.randn(k, n)
        for m in (1, 8, 64):
            x = torch.randn(m, k)
            fast = milliseconds(kernels.gguf_mm, (x, blocks, type_id, True), 20)
            scalar = milliseconds(kernels.gguf_mm, (x, blocks, type_id, False), 3)
            dense = milliseconds(torch.mm, (x, weight_t), 20)
            print(f"| {name} | {n} x {k} | {m} | {fast:.3f} | {scalar:.3f} | {dense:.3f} |")


if __name__ == "__main__":
    main()
