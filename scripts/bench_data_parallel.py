"""Serving throughput of data-parallel replicas vs one multi-threaded engine, on one machine.

For each configuration (replicas x threads per replica) this starts ``kaon serve``, sends one
warm-up request, then ``--num-requests`` concurrent greedy streams (distinct prompts, ``ignore_eos``
so each generates exactly ``--output-len`` tokens) through the real OpenAI client, and reports
output tokens/s over the wall time of the burst, mean TTFT and mean TPOT. Configurations run one
after another, in the same invocation, so their ratios are comparable.

    python scripts/bench_data_parallel.py --configs 1x2 2x1 1x1 --num-requests 32 --output-len 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(replicas: int, threads: int, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "kaon", "serve", "--port", str(port), "--no-access-log",
               "--data-parallel-size", str(replicas), "--num-threads", str(threads),
               "--kv-cache-memory", args.kv_cache_memory, "--max-num-seqs", "64",
               "--log-level", "WARNING"]  # fmt: skip
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kaon serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("kaon serve did not become healthy")


async def burst(url: str, args: argparse.Namespace) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900)
    model = (await client.models.list()).data[0].id

    async def one(index: int) -> tuple[float, float, int]:
        sent = time.perf_counter()
        first = None
        num_chunks = 0
        stream = await client.completions.create(
            model=model, prompt=f"Request {index}. Tell a long story about the number {index}.",
            max_tokens=args.output_len, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                first = first or time.perf_counter()
                num_chunks += 1
        done = time.perf_counter()
        return first - sent, (done - first) / max(args.output_len - 1, 1), num_chunks

    await one(-1)  # warm-up: first-call costs (kernel load, allocator) stay out of the figure
    start_time = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(args.num_requests)))
    wall = time.perf_counter() - start_time
    await client.close()
    num_tokens = args.num_requests * args.output_len
    return {
        "output_tokens_per_s": num_tokens / wall,
        "wall_s": wall,
        "mean_ttft_s": sum(r[0] for r in results) / len(results),
        "mean_tpot_s": sum(r[1] for r in results) / len(results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["1x2", "2x1"],
                        help="REPLICASxTHREADS each (default: 1x2 2x1)")  # fmt: skip
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--kv-cache-memory", default="200M", help="per replica")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    rows = {}
    for config in args.configs:
        replicas, threads = (int(x) for x in config.split("x"))
        process, url = start(replicas, threads, args)
        try:
            rows[config] = asyncio.run(burst(url, args))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        print(config, json.dumps({k: round(v, 4) for k, v in rows[config].items()}), flush=True)
    print(f"\n{args.num_requests} concurrent streams x {args.output_len} tokens, cores "
          f"{len(os.sched_getaffinity(0))}")  # fmt: skip
    print("| replicas x threads | output tok/s | wall (s) | mean TTFT (s) | mean TPOT (s) |")
    print("|---|---|---|---|---|")
    for config, row in rows.items():
        print(f"| {config} | {row['output_tokens_per_s']:.1f} | {row['wall_s']:.2f} | "
              f"{row['mean_ttft_s']:.3f} | {row['mean_tpot_s']:.4f} |")  # fmt: skip
    if args.output_json:
        with open(args.output_json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
