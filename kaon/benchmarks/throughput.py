"""``kaon bench throughput``: offline generation of many requests at once, optionally side by
side with Hugging Face transformers on the same token ids in the same process.

Every request generates exactly its output length (``ignore_eos``): ``--output-len``, or one
drawn around it with ``--range-ratio``; output tokens/s = sum of output lengths / elapsed.
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

from tqdm import tqdm

from kaon.benchmarks.common import (
    machine_info,
    peak_rss_mib,
    print_machine,
    print_table,
    random_prompts,
    ratio,
    read_dataset,
    request_figures,
    reset_peak_rss,
    run_requests,
    sample_lengths,
    settings,
    summarize,
    write_json,
)
from kaon.benchmarks.datasets import DATASET_NAMES, builtin_prompts
from kaon.config import single_engine_options

NUM_MATCH_TOKENS = 16  # leading greedy tokens compared between kaon and transformers
NUM_WARMUP_PROMPTS = 4
NUM_WARMUP_TOKENS = 8


def add_throughput_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("throughput benchmark")
    group.add_argument("--num-prompts", type=int, default=64, help="requests (default 64)")
    group.add_argument(
        "--input-len",
        type=int,
        default=32,
        help="prompt tokens of the synthetic prompts (default 32)",
    )
    group.add_argument(
        "--output-len", type=int, default=128, help="tokens generated per request (default 128)"
    )
    group.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="sample each request's input and output length uniformly from "
        "[len * (1 - R), len * (1 + R)] (default 0: fixed lengths)",
    )
    group.add_argument(
        "--dataset",
        default=None,
        help="JSONL file with a 'prompt' per line, or a text file with one prompt "
        "per line (default: random token ids seeded by --seed)",
    )
    group.add_argument(
        "--dataset-name",
        choices=DATASET_NAMES,
        default="random",
        help="built-in prompts when no --dataset is given: random token ids, grounded "
        "('repeat / fix / summarize this text', 200-500 token inputs) or free-writing "
        "(default random)",
    )
    group.add_argument(
        "--hf-batch-size",
        type=int,
        default=32,
        help="padded batch size of the transformers baseline (default 32)",
    )


def _validate(args: argparse.Namespace) -> None:
    for name in ("num_prompts", "input_len", "output_len", "hf_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.range_ratio < 1.0:
        raise ValueError(f"--range-ratio must be in [0, 1), got {args.range_ratio}")
    if args.range_ratio and args.compare_hf:
        raise ValueError("--compare-hf needs fixed lengths: --range-ratio 0")


def _prompts(args: argparse.Namespace, tokenizer: Any) -> list[list[int]]:
    """Token ids of every prompt; dataset texts are tokenized once by kaon's tokenizer so both
    engines get the same ids."""
    if args.dataset:
        return [tokenizer.encode(text) for text in read_dataset(args.dataset, args.num_prompts)]
    if getattr(args, "dataset_name", "random") != "random":
        texts = builtin_prompts(args.dataset_name, args.num_prompts, args.seed)
        return [tokenizer.encode(text) for text in texts]
    lengths = sample_lengths(args.num_prompts, args.input_len, args.range_ratio, args.seed)
    prompts = random_prompts(
        args.num_prompts, max(lengths), tokenizer.vocab_size, tokenizer.all_special_ids, args.seed
    )
    return [prompt[:length] for prompt, length in zip(prompts, lengths, strict=True)]


def output_lengths(args: argparse.Namespace) -> list[int]:
    """Tokens to generate per request: ``--output-len``, sampled when ``--range-ratio`` > 0."""
    return sample_lengths(args.num_prompts, args.output_len, args.range_ratio, args.seed + 2)


def _rates(
    num_requests: int, num_prompt_tokens: int, num_output_tokens: int, elapsed: float
) -> dict[str, Any]:
    return {
        "num_requests": num_requests,
        "num_prompt_tokens": num_prompt_tokens,
        "num_output_tokens": num_output_tokens,
        "elapsed_s": elapsed,
        "requests_per_s": num_requests / elapsed,
        "output_tokens_per_s": num_output_tokens / elapsed,
        "total_tokens_per_s": (num_prompt_tokens + num_output_tokens) / elapsed,
    }


def run_throughput(args: argparse.Namespace) -> int:
    """Handler of ``kaon bench throughput``; returns the exit code."""
    from kaon.entrypoints.llm import LLM

    _validate(args)
    llm = LLM(**single_engine_options(args, "kaon bench throughput"))
    model_path = llm.engine.model_path
    prompts = _prompts(args, llm.engine.tokenizer)
    kaon, kaon_token_ids = _run_kaon(llm.engine, prompts, args)
    result = {
        "benchmark": "throughput",
        "settings": settings(args, model_path, _SETTINGS),
        "machine": machine_info(),
        "kaon": kaon,
    }
    if args.compare_hf:
        del llm  # free kaon's weights and KV cache before loading transformers
        gc.collect()
        result["transformers"] = _run_hf(model_path, prompts, kaon_token_ids, args)
    _report(result)
    if args.output_json:
        write_json(args.output_json, result)
    return 0


def _run_kaon(
    engine: Any, prompts: list[list[int]], args: argparse.Namespace
) -> tuple[dict[str, Any], list[list[int]]]:
    """Warm up on a few other random prompts, then run all ``prompts`` at once.

    Returns (figures, generated token ids per prompt).
    """
    from kaon.sampling_params import SamplingParams

    tokenizer = engine.tokenizer
    # Other ids than the measured prompts (seed + 1): no prefix-cache hits on them later.
    warmup = random_prompts(
        min(NUM_WARMUP_PROMPTS, args.num_prompts),
        args.input_len,
        tokenizer.vocab_size,
        tokenizer.all_special_ids,
        args.seed + 1,
    )
    num_warmup_tokens = min(NUM_WARMUP_TOKENS, args.output_len)
    warmup_params = SamplingParams(temperature=0.0, max_tokens=num_warmup_tokens, ignore_eos=True)
    run_requests(engine, warmup, warmup_params, "warmup")
    params = [
        SamplingParams(temperature=0.0, max_tokens=length, ignore_eos=True)
        for length in output_lengths(args)
    ]
    run = run_requests(engine, prompts, params, "throughput", progress_desc="kaon")
    per_request = [request_figures(output) for output in run.outputs]
    num_prompt_tokens = sum(r["prompt_len"] for r in per_request)
    num_output_tokens = sum(r["output_len"] for r in per_request)
    figures = _rates(len(prompts), num_prompt_tokens, num_output_tokens, run.elapsed)
    spec = engine.stats().spec_decode
    figures.update(
        spec_decode=None
        if spec is None
        else {
            "num_drafts": spec.num_drafts,
            "num_draft_tokens": spec.num_draft_tokens,
            "num_accepted_tokens": spec.num_accepted_tokens,
            "num_accepted_tokens_per_pos": list(spec.num_accepted_tokens_per_pos),
            "mean_acceptance_length": spec.mean_acceptance_length,
        },
        peak_rss_mib=peak_rss_mib(),
        peak_kv_cache_usage=run.peak_kv_cache_usage,
        num_steps=run.num_steps,
        ttft_s=summarize([r["ttft"] for r in per_request]),
        requests=per_request,
    )
    return figures, [output.outputs[0].token_ids for output in run.outputs]


_SETTINGS = (
    "num_prompts",
    "input_len",
    "output_len",
    "range_ratio",
    "dataset",
    "dataset_name",
    "seed",
    "compare_hf",
    "hf_batch_size",
)


def _run_hf(
    model_path: str,
    prompts: list[list[int]],
    kaon_token_ids: list[list[int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from kaon.benchmarks.hf_baseline import generate_batched, load_hf_model

    rss_was_reset = reset_peak_rss()
    model = load_hf_model(model_path)
    generate_batched(model, prompts[:NUM_WARMUP_PROMPTS], NUM_WARMUP_TOKENS, args.hf_batch_size)
    with tqdm(total=len(prompts), desc="transformers", unit="req") as progress:
        hf_token_ids, elapsed = generate_batched(
            model, prompts, args.output_len, args.hf_batch_size, progress.update
        )
    matches = [
        kaon[:NUM_MATCH_TOKENS] == hf[:NUM_MATCH_TOKENS]
        for kaon, hf in zip(kaon_token_ids, hf_token_ids, strict=True)
    ]
    figures = _rates(
        len(prompts), sum(len(p) for p in prompts), sum(len(t) for t in hf_token_ids), elapsed
    )
    figures.update(
        # Without a reset the peak is the process's, kaon's engine included.
        peak_rss_mib=peak_rss_mib() if rss_was_reset else None,
        num_greedy_matches=sum(matches),
        greedy_match=matches,
    )
    return figures


def _report(result: dict[str, Any]) -> None:
    kaon, hf = result["kaon"], result.get("transformers") or {}
    print_machine(result["machine"])
    rows = []
    for label, key in (
        ("requests/s", "requests_per_s"),
        ("output tokens/s", "output_tokens_per_s"),
        ("total tokens/s", "total_tokens_per_s"),
        ("peak RSS (MiB)", "peak_rss_mib"),
    ):
        rows.append([label, kaon[key], hf.get(key), ratio(kaon[key], hf.get(key))])
    rows.append(["elapsed (s)", kaon["elapsed_s"], hf.get("elapsed_s"), None])
    rows.append(["peak KV cache usage (%)", 100.0 * kaon["peak_kv_cache_usage"], None, None])
    rows.append(["TTFT median (s)", kaon["ttft_s"]["median"], None, None])
    tpots = [r["tpot"] for r in kaon["requests"] if r["tpot"]]
    if tpots:  # per-request decode speed: at --max-num-seqs 1, single-stream decode tokens/s
        rows.append(["decode tokens/s per request (1 / median TPOT)",
                     1.0 / summarize(tpots)["median"], None, None])  # fmt: skip
    spec = kaon.get("spec_decode")
    if spec is not None:  # includes the warm-up requests' drafts
        rows.append(["spec decode mean acceptance length", spec["mean_acceptance_length"],
                     None, None])  # fmt: skip
        rows.append(["spec decode drafts / draft tokens / accepted",
                     f"{spec['num_drafts']} / {spec['num_draft_tokens']} / "
                     f"{spec['num_accepted_tokens']}", None, None])  # fmt: skip
    if hf:
        matched = f"{hf['num_greedy_matches']}/{hf['num_requests']}"
        rows.append([f"greedy = transformers (first {NUM_MATCH_TOKENS})", None, matched, None])
    title = (
        f"throughput: {kaon['num_requests']} prompts, {kaon['num_prompt_tokens']} prompt "
        f"tokens, {kaon['num_output_tokens']} output tokens"
    )
    print_table(title, ["metric", "kaon", "transformers", "kaon/transformers"], rows)
