"""``kaon bench serve``: an async load generator against any OpenAI-compatible server.

For each load level (a fixed ``--concurrency``, or a Poisson ``--request-rate``) it sends its own
prompts as streaming requests and measures per-request TTFT, TPOT, ITL and end-to-end latency,
then request and output-token throughput, goodput under ``--slo-*`` and failed requests
(definitions in ``serve_metrics``). Output tokens are counted from the server's ``usage``
(``stream_options.include_usage``) when it sends one, else by encoding the returned text with
``--tokenizer``; the JSON and the table say which.

``--verify`` first runs every prompt alone (concurrency 1, greedy) through the same server, then
reports each response under load whose text differs: batching, chunked prefill, prefix caching
and preemption must not change greedy output. With ``--verify`` the load requests hit the prefix
cache the reference run filled, so their TTFT is optimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import time
from typing import Any

import httpx
from tqdm import tqdm

from kaon.benchmarks.common import machine_info, random_prompts, read_dataset, write_json
from kaon.benchmarks.serve_client import RequestResult, request_body, send_request
from kaon.benchmarks.serve_metrics import Slo, level_figures
from kaon.benchmarks.serve_report import compare_to_reference, print_report, server_memory


def _float_list(text: str) -> list[float]:
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        message = f"not a comma-separated list of numbers: {text}"
        raise argparse.ArgumentTypeError(message) from error
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"every value must be > 0: {text}")
    return values


def _int_list(text: str) -> list[int]:
    values = _float_list(text)
    if any(value != int(value) for value in values):
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text}")
    return [int(value) for value in values]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving benchmark")
    group.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    group.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    group.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token")
    group.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    load = group.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency", type=_int_list, default=None, help="levels, e.g. 1,8,32 (default 1)"
    )
    load.add_argument(
        "--request-rate",
        type=_float_list,
        default=None,
        help="Poisson arrival rates in requests/s, e.g. 0.5,2",
    )
    group.add_argument(
        "--num-prompts",
        type=_int_list,
        default=None,
        help="requests per level: one number, or one per level (default: max(8, 2 x "
        "concurrency); 16 per rate)",
    )
    group.add_argument("--input-len", type=int, default=32, help="synthetic prompt tokens")
    group.add_argument("--output-len", type=int, default=128, help="max_tokens per request")
    group.add_argument("--dataset", default=None, help="JSONL ('prompt' per line) or text file")
    group.add_argument(
        "--tokenizer",
        default=None,
        help="GGUF file or HF directory for synthetic prompts and for counting output tokens "
        "when the server sends no usage (default: kaon's default model)",
    )
    group.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    group.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="do not send ignore_eos (a vLLM extension) with each request",
    )
    group.add_argument(
        "--extra-body",
        type=_json_object,
        default=None,
        help='JSON object merged into every request body, e.g. \'{"logit_bias": {"2": -100}}\'',
    )
    group.add_argument(
        "--structured-output",
        choices=("none", "json"),
        default="none",
        help="json: every request carries a JSON-schema constraint (structured_outputs.json, "
        "a list of >= 64 objects, so it runs to max_tokens); compare TPOT with none",
    )
    group.add_argument("--num-warmup", type=int, default=1, help="unmeasured requests first")
    group.add_argument("--seed", type=int, default=0, help="prompts and Poisson arrivals")
    group.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    group.add_argument("--slo-ttft", type=float, default=None, help="goodput SLO, seconds")
    group.add_argument("--slo-tpot", type=float, default=None, help="goodput SLO, seconds")
    group.add_argument("--slo-e2e", type=float, default=None, help="goodput SLO, seconds")
    group.add_argument("--verify", action="store_true", help="check greedy outputs under load")
    group.add_argument(
        "--server-pid", type=int, default=None, help="report this process's peak RSS (Linux)"
    )
    group.add_argument(
        "--plot", default=None, help="PNG path (default: next to --output-json, or bench-serve.png)"
    )


def _validate(args: argparse.Namespace) -> None:
    for name, minimum in (("input_len", 1), ("output_len", 1), ("num_warmup", 0)):
        if getattr(args, name) < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}")
    num_levels = len(args.request_rate or args.concurrency or [1])
    if args.num_prompts is not None and len(args.num_prompts) not in (1, num_levels):
        raise ValueError(f"--num-prompts: give 1 or {num_levels} numbers, one per level")
    if args.verify and args.temperature != 0.0:
        raise ValueError("--verify needs --temperature 0 (greedy)")
    if args.verify and args.structured_output != "none":
        raise ValueError("--verify compares unconstrained outputs; drop --structured-output")
    if args.structured_output == "json":
        from kaon.benchmarks.structured_schemas import BENCH_SCHEMA

        constraint = {"structured_outputs": {"json": BENCH_SCHEMA}}
        args.extra_body = {**(args.extra_body or {}), **constraint}


def _levels(args: argparse.Namespace) -> tuple[str, list[tuple[float, int]]]:
    """('concurrency' | 'request_rate', [(load, number of requests)])."""
    kind = "request_rate" if args.request_rate else "concurrency"
    loads = args.request_rate or args.concurrency or [1]
    counts = args.num_prompts or [
        16 if kind == "request_rate" else max(8, 2 * int(load)) for load in loads
    ]
    if len(counts) == 1:
        counts = counts * len(loads)
    return kind, list(zip(loads, counts, strict=True))


def load_tokenizer(path: str | None) -> Any:
    """kaon's Tokenizer of a GGUF file or HF directory (default: the default model's)."""
    from kaon.tokenizer import Tokenizer, read_gguf_metadata

    if path is None:
        from kaon.models.loader.default_model import default_model_path

        path = str(default_model_path())
    if os.path.isdir(path):
        return Tokenizer.from_hf_dir(path)
    return Tokenizer.from_gguf(read_gguf_metadata(path))


def _prompts(args: argparse.Namespace, tokenizer: Any, count: int) -> list[str]:
    if args.dataset:
        return read_dataset(args.dataset, count)
    ids = random_prompts(
        count, args.input_len, tokenizer.vocab_size, tokenizer.all_special_ids, args.seed
    )
    return [tokenizer.decode(prompt) for prompt in ids]


class _Runner:
    """Sends requests with one shared client; counts output tokens when usage is missing."""

    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient, tokenizer: Any):
        self.args, self.client, self.tokenizer = args, client, tokenizer
        self.url = args.base_url.rstrip("/") + (
            "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
        )
        self.headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None

    async def one(self, prompt: str, index: int, max_tokens: int | None = None) -> RequestResult:
        args = self.args
        body = request_body(
            args.endpoint,
            args.model,
            prompt,
            max_tokens or args.output_len,
            args.ignore_eos,
            args.temperature,
            args.extra_body,
        )
        result = await send_request(self.client, self.url, body, args.endpoint, index, self.headers)
        if result.success and result.output_tokens is None:
            result.output_tokens = len(self.tokenizer.encode(result.text, add_special_tokens=False))
            result.output_tokens_source = "tokenizer"
        return result

    async def level(self, prompts: list[str], kind: str, load: float, desc: str) -> dict:
        """Run one load level; returns its "requests" (JSON records) and "duration_s"."""
        progress = tqdm(total=len(prompts), desc=desc, unit="req")
        semaphore = asyncio.Semaphore(int(load)) if kind == "concurrency" else None
        arrivals = random.Random(self.args.seed)

        async def limited(prompt: str, index: int) -> RequestResult:
            if semaphore is None:
                result = await self.one(prompt, index)
            else:
                async with semaphore:
                    result = await self.one(prompt, index)
            progress.update(1)
            return result

        start = time.perf_counter()
        tasks = []
        for index, prompt in enumerate(prompts):
            if kind == "request_rate" and index > 0:
                await asyncio.sleep(arrivals.expovariate(load))  # Poisson process
            tasks.append(asyncio.create_task(limited(prompt, index)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        progress.close()
        return {"duration_s": duration, "requests": [r.as_json() for r in results]}


async def _resolve_model(client: httpx.AsyncClient, args: argparse.Namespace) -> str | None:
    if args.model:
        return args.model
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    try:
        response = await client.get(args.base_url.rstrip("/") + "/v1/models", headers=headers)
        return response.json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError):
        return None


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    kind, levels = _levels(args)
    tokenizer = load_tokenizer(args.tokenizer)
    all_prompts = _prompts(args, tokenizer, args.num_warmup + sum(n for _, n in levels))
    warmup, all_prompts = all_prompts[: args.num_warmup], all_prompts[args.num_warmup :]
    timeout = httpx.Timeout(args.timeout, connect=30.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        args.model = await _resolve_model(client, args)
        runner = _Runner(args, client, tokenizer)
        for index, prompt in enumerate(warmup):
            await runner.one(prompt, index, max_tokens=min(8, args.output_len))
        reference = None
        if args.verify:
            reference = await runner.level(all_prompts, "concurrency", 1, "verify reference")
        slo = Slo(args.slo_ttft, args.slo_tpot, args.slo_e2e)
        results, offset = [], 0
        for load, count in levels:
            prompts = all_prompts[offset : offset + count]
            memory_task = server_memory(args.server_pid)
            run = await runner.level(prompts, kind, load, f"{kind} {load:g}")
            figures = level_figures(run["requests"], run["duration_s"], slo)
            level = {"load": load, "figures": figures}
            level["server_memory"] = await memory_task.stop() if memory_task else None
            if reference is not None:
                expected = reference["requests"][offset : offset + count]
                level["verify"] = compare_to_reference(expected, run["requests"])
            level["requests"] = run["requests"]
            results.append(level)
            offset += count
    return {
        "benchmark": "serve",
        "settings": _settings(args, kind),
        "machine": machine_info(),
        "load_kind": kind,
        "levels": results,
        "verify_reference": reference,
    }


def _settings(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    return {"load_kind": kind, **{name: getattr(args, name) for name in _SETTINGS}}


_SETTINGS = (
    "base_url",
    "model",
    "endpoint",
    "concurrency",
    "request_rate",
    "num_prompts",
    "input_len",
    "output_len",
    "dataset",
    "tokenizer",
    "temperature",
    "ignore_eos",
    "extra_body",
    "structured_output",
    "num_warmup",
    "seed",
    "slo_ttft",
    "slo_tpot",
    "slo_e2e",
    "verify",
    "server_pid",
)


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``kaon bench serve``; returns the exit code (1 when --verify found a
    difference or every request of a level failed)."""
    _validate(args)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    result = asyncio.run(_run(args))
    if len(result["levels"]) > 1:
        from kaon.benchmarks.serve_plot import plot_levels

        default = "bench-serve.png"
        if args.output_json:
            default = os.path.splitext(args.output_json)[0] + ".png"
        path = args.plot or default
        label = "concurrency" if result["load_kind"] == "concurrency" else "request rate (req/s)"
        plot_levels(result["levels"], label, f"kaon bench serve: {args.base_url}", path)
        result["plot"] = path
    if args.output_json:
        write_json(args.output_json, result)
    print_report(result)
    failed = any(level["figures"]["num_completed"] == 0 for level in result["levels"])
    mismatched = any(level.get("verify", {}).get("num_mismatches") for level in result["levels"])
    return 1 if failed or mismatched else 0
