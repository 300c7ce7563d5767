"""Measure one all-reduce of a ``[rows, hidden]`` float32 tensor over gloo on loopback: the cost
tensor parallelism adds twice per layer (after o_proj and down_proj).

    python -m kaon.distributed.allreduce_probe --world-size 2 --rows 1 64 256 --hidden 576

Prints the median seconds per all-reduce for each row count (the decode batch size is the row
count of a decode step). Ranks are spawned processes with 1 thread each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kaon.distributed.parallel_state import create_store


def _rank(rank: int, world_size: int, port: int, rows: list[int], hidden: int, iters: int):
    torch.set_num_threads(1)
    store = create_store(port, is_master=False, timeout_s=60)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    for num_rows in rows:
        tensor = torch.randn(num_rows, hidden)
        for _ in range(10):
            dist.all_reduce(tensor)
        times = []
        for _ in range(iters):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - start)
        if rank == 0:
            median = statistics.median(times)
            print(f"rows {num_rows:5d} x {hidden}: {median * 1e6:9.1f} us per all-reduce")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    store = create_store(0, is_master=True, timeout_s=60)  # ranks connect to its port
    mp.spawn(
        _rank,
        args=(args.world_size, store.port, args.rows, args.hidden, args.iters),
        nprocs=args.world_size,
    )


if __name__ == "__main__":
    main()
