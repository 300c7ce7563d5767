"""``kaon bench latency``: one request at a time; TTFT, TPOT and end-to-end latency, set against
the float32 memory-bandwidth floor and, optionally, Hugging Face transformers.

The floor: a batch-1 decode step reads every weight once, so it cannot beat
    floor tokens/s = measured read bandwidth (bytes/s) / weight bytes per step.
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

from tqdm import tqdm

from kaon.benchmarks.common import (
    machine_info,
    measure_memory_bandwidth,
    peak_rss_mib,
    print_machine,
    print_table,
    random_prompts,
    ratio,
    request_figures,
    reset_peak_rss,
    run_requests,
    settings,
    summarize,
    write_json,
)
from kaon.config import single_engine_options

NUM_MATCH_TOKENS = 16  # leading greedy tokens compared between kaon and transformers
SERIES = (("ttft", "TTFT (s)"), ("tpot", "TPOT (s/token)"), ("e2e", "end-to-end (s)"))


def add_latency_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("latency benchmark")
    group.add_argument("--input-len", type=int, default=32, help="prompt tokens (default 32)")
    group.add_argument(
        "--output-len", type=int, default=128, help="tokens generated per request (default 128)"
    )
    group.add_argument("--num-iters", type=int, default=5, help="measured requests (default 5)")
    group.add_argument(
        "--num-iters-warmup", type=int, default=1, help="unmeasured requests first (default 1)"
    )
    group.add_argument(
        "--bandwidth-mib",
        type=int,
        default=1024,
        help="size of the float32 tensor read to measure memory bandwidth (default 1024 MiB)",
    )


def _validate(args: argparse.Namespace) -> None:
    minimums = {
        "input_len": 1,
        "output_len": 2,
        "num_iters": 1,
        "num_iters_warmup": 0,
        "bandwidth_mib": 1,
    }
    for name, minimum in minimums.items():
        if getattr(args, name) < minimum:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be >= {minimum}, got {getattr(args, name)}")


def run_latency(args: argparse.Namespace) -> int:
    """Handler of ``kaon bench latency``; returns the exit code."""
    from kaon.entrypoints.llm import LLM
    from kaon.layers.quantization import weight_bytes  # parameters and quantized buffers

    _validate(args)
    llm = LLM(**single_engine_options(args, "kaon bench latency"))
    engine = llm.engine
    model_path, tokenizer = engine.model_path, engine.tokenizer
    # A fresh prompt per iteration: a repeated one would be served from the prefix cache.
    num_prompts = args.num_iters_warmup + args.num_iters
    prompts = random_prompts(
        num_prompts, args.input_len, tokenizer.vocab_size, tokenizer.all_special_ids, args.seed
    )
    kaon, kaon_token_ids = _run_kaon(engine, prompts, args)
    floor = _floor(weight_bytes(engine.executor.model_runner.model), args.bandwidth_mib, kaon)
    result = {
        "benchmark": "latency",
        "settings": settings(args, model_path, _SETTINGS),
        "machine": machine_info(),
        "floor": floor,
        "kaon": kaon,
    }
    if args.compare_hf:
        del llm, engine  # free kaon's weights and KV cache before loading transformers
        gc.collect()
        hf = _run_hf(model_path, prompts, kaon_token_ids, args)
        hf["ratio_to_floor"] = ratio(hf["decode_tokens_per_s"], floor["floor_tokens_per_s"])
        result["transformers"] = hf
    _report(result)
    if args.output_json:
        write_json(args.output_json, result)
    return 0


def _run_kaon(
    engine: Any, prompts: list[list[int]], args: argparse.Namespace
) -> tuple[dict[str, Any], list[list[int]]]:
    """Run the prompts one at a time; the first ``--num-iters-warmup`` are not measured.

    Returns (figures, generated token ids per measured prompt).
    """
    from kaon.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    token_ids, per_request = [], []
    for index, prompt in enumerate(tqdm(prompts, desc="kaon", unit="req")):
        output = run_requests(engine, [prompt], params, f"latency-{index}").outputs[0]
        if index >= args.num_iters_warmup:
            token_ids.append(output.outputs[0].token_ids)
            per_request.append(request_figures(output))
    figures = _summary(per_request)
    figures["peak_rss_mib"] = peak_rss_mib()  # before the bandwidth probe allocates its tensor
    return figures, token_ids


def _summary(per_request: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {key: summarize([r[key] for r in per_request]) for key, _ in SERIES}
    summary["decode_tokens_per_s"] = 1.0 / summary["tpot"]["mean"]
    summary["requests"] = per_request
    return summary


def _floor(num_weight_bytes: int, bandwidth_mib: int, kaon: dict[str, Any]) -> dict[str, Any]:
    bandwidth = measure_memory_bandwidth(bandwidth_mib * 2**20)
    floor_tokens_per_s = bandwidth / num_weight_bytes
    return {
        "weight_bytes_per_step": num_weight_bytes,
        "memory_bandwidth_bytes_per_s": bandwidth,
        "floor_tokens_per_s": floor_tokens_per_s,
        "kaon_ratio_to_floor": kaon["decode_tokens_per_s"] / floor_tokens_per_s,
    }


_SETTINGS = (
    "input_len",
    "output_len",
    "num_iters",
    "num_iters_warmup",
    "seed",
    "compare_hf",
    "bandwidth_mib",
)


def _run_hf(
    model_path: str,
    prompts: list[list[int]],
    kaon_token_ids: list[list[int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from kaon.benchmarks.hf_baseline import generate_single, load_hf_model

    rss_was_reset = reset_peak_rss()
    model = load_hf_model(model_path)
    per_request, matches = [], []
    for index, prompt in enumerate(tqdm(prompts, desc="transformers", unit="req")):
        token_ids, figures = generate_single(model, prompt, args.output_len)
        if index >= args.num_iters_warmup:
            kaon = kaon_token_ids[index - args.num_iters_warmup]
            matches.append(kaon[:NUM_MATCH_TOKENS] == token_ids[:NUM_MATCH_TOKENS])
            per_request.append({"prompt_len": len(prompt), "output_len": len(token_ids), **figures})
    hf = _summary(per_request)
    # Without a reset the peak is the process's, kaon's engine included.
    hf["peak_rss_mib"] = peak_rss_mib() if rss_was_reset else None
    hf.update(num_greedy_matches=sum(matches), greedy_match=matches)
    return hf


def _report(result: dict[str, Any]) -> None:
    kaon, hf, floor = result["kaon"], result.get("transformers"), result["floor"]
    settings = result["settings"]
    print_machine(result["machine"])
    engines = [("kaon", kaon)] + ([("transformers", hf)] if hf else [])
    rows = [
        [name, label, *figures[key].values()] for name, figures in engines for key, label in SERIES
    ]
    title = (
        f"latency: {settings['num_iters']} requests of {settings['input_len']} prompt "
        f"+ {settings['output_len']} output tokens, one at a time"
    )
    print_table(title, ["engine", "metric", "mean", "median", "p90", "p99"], rows, 2)
    hf = hf or {}
    rows = [
        [label, kaon[key], hf.get(key), ratio(kaon[key], hf.get(key))]
        for label, key in (
            ("decode tokens/s (1/TPOT)", "decode_tokens_per_s"),
            ("peak RSS (MiB)", "peak_rss_mib"),
        )
    ]
    rows.append(
        ["ratio to bandwidth floor", floor["kaon_ratio_to_floor"], hf.get("ratio_to_floor"), None]
    )
    if hf:
        matched = f"{hf['num_greedy_matches']}/{settings['num_iters']}"
        rows.append([f"greedy = transformers (first {NUM_MATCH_TOKENS})", None, matched, None])
    print_table("decode", ["metric", "kaon", "transformers", "kaon/transformers"], rows)
    print(
        f"bandwidth floor: {floor['weight_bytes_per_step'] / 1e6:.1f} MB of weights per step at "
        f"{floor['memory_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s measured read bandwidth "
        f"= {floor['floor_tokens_per_s']:.1f} tokens/s"
    )
