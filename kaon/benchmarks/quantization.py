"""Side-by-side cost of each weight format, in one process: perplexity, weight bytes, decode
tokens/s at batch 1 and output tokens/s at batch 32.

    python -m kaon.benchmarks.quantization [--text FILE] [--num-tokens 2048] [--window 2048]

Rows: float32, bfloat16, int8, int4 g32 re-quantized from the float32 weights, int4 g128 (64 on
576-wide layers) and the GGUF-native Q4_1 -> int4 g32 path. Decode at batch 1: one request of
``--input-len`` random prompt tokens and ``--output-len`` greedy tokens, tokens/s = (output - 1)
/ (last token time - first token time), best of ``--iters``. Batch 32: 32 such requests at once,
output tokens / wall seconds. The perplexity is ``kaon.eval.perplexity`` over the text's first
``--num-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time

from kaon.eval.perplexity import evaluate_perplexity, window_bos_token_id
from kaon.layers.quantization import LINEAR_WEIGHTS, quantize_model, weight_bytes
from kaon.sampling_params import SamplingParams

ROWS = {
    "float32": {"quantization": "none"},
    "bfloat16": {"dtype": "bfloat16", "quantization": "none"},
    "GGUF native (auto)": {"quantization": "auto"},
    "int8": {"quantization": "int8"},
    "int4 g32 (re-quantized)": {"quantization": "none", "requantize": ("int4", 32)},
    "int4 g128": {"quantization": "int4", "quantization_group_size": 128},
    "int4 g32 (GGUF-native Q4_1)": {"quantization": "int4", "quantization_group_size": 32},
}


def linear_bytes(model) -> int:
    """Bytes of the 30 decoder layers' linear weights (LM head excluded)."""
    total = 0
    for layer in model.layers:
        for module_name, attr in LINEAR_WEIGHTS:
            weight = getattr(getattr(layer, module_name), attr)
            tensors = [weight] if hasattr(weight, "numel") else list(weight.buffers())
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _decode_rate(llm, prompts: list[list[int]], output_len: int) -> float:
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    (output,) = llm.generate(prompts[:1], params, use_tqdm=False)
    metrics = output.metrics
    return (output_len - 1) / (metrics.last_token_time - metrics.first_token_time)


def _batch_rate(llm, prompts: list[list[int]], output_len: int) -> float:
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / seconds


def run_row(name: str, options: dict, args: argparse.Namespace, text: str) -> dict:
    from kaon import LLM

    options = dict(options)
    requantize = options.pop("requantize", None)
    llm = LLM(kv_cache_memory_bytes=args.kv_cache_memory, max_model_len=args.window + 2,
              max_num_seqs=32, num_threads=args.num_threads, **options)  # fmt: skip
    model = llm.engine.executor.model_runner.model
    if requantize:  # same function the loader calls, on the dequantized float32 weights
        quantize_model(model, *requantize)
    ids = llm.tokenizer.encode(text, add_special_tokens=False)[: args.num_tokens]
    ppl = evaluate_perplexity(
        llm, ids, args.window, args.window, window_bos_token_id(llm.tokenizer)
    )
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 40000) for _ in range(args.input_len)] for _ in range(32)]
    _decode_rate(llm, prompts, 8)  # warm-up
    decode = max(_decode_rate(llm, prompts, args.output_len) for _ in range(args.iters))
    batch = _batch_rate(llm, prompts, args.output_len)
    row = {
        "name": name,
        "tokens": ppl.num_tokens,
        "mean_nll": ppl.mean_nll,
        "perplexity": ppl.perplexity,
        "weight_bytes": weight_bytes(model),
        "linear_bytes": linear_bytes(model),
        "decode_tok_s_batch1": decode,
        "output_tok_s_batch32": batch,
    }
    print(json.dumps(row), flush=True)
    del llm, model
    gc.collect()
    return row


def interleaved_speed(args: argparse.Namespace, names: list[str]) -> None:
    """All rows' engines loaded at once; decode (batch 1) and batch-32 rounds alternate between
    them, so a change of machine load hits every row alike. Prints the median of each."""
    from statistics import median

    from kaon import LLM

    engines = {}
    for name in names:
        options = dict(ROWS[name])
        requantize = options.pop("requantize", None)
        engines[name] = LLM(kv_cache_memory_bytes=args.kv_cache_memory, max_num_seqs=32,
                            num_threads=args.num_threads, **options)  # fmt: skip
        if requantize:
            quantize_model(engines[name].engine.executor.model_runner.model, *requantize)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 40000) for _ in range(args.input_len)] for _ in range(32)]
    decode: dict[str, list[float]] = {name: [] for name in names}
    batch: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        _decode_rate(engines[name], prompts, 8)  # warm-up
    for _ in range(args.iters):
        for name in names:
            decode[name].append(_decode_rate(engines[name], prompts, args.output_len))
            batch[name].append(_batch_rate(engines[name], prompts, args.output_len))
    print("| weights | decode tok/s (batch 1) | x float32 | output tok/s (batch 32) | x float32 |")
    print("|---|---|---|---|---|")
    base = names[0]
    for name in names:
        d, b = median(decode[name]), median(batch[name])
        print(f"| {name} | {d:.1f} | {d / median(decode[base]):.2f} | {b:.1f} | "
              f"{b / median(batch[base]):.2f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    parser.add_argument("--num-tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--kv-cache-memory", type=int, default=300_000_000)
    parser.add_argument(
        "--num-threads", type=int, default=None, help="torch threads (1 on an oversubscribed host)"
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--output-json", default=None)
    parser.add_argument(
        "--speed-only", action="store_true", help="interleaved speed rounds, no perplexity"
    )
    args = parser.parse_args()
    if args.speed_only:
        interleaved_speed(args, args.rows.split(","))
        return
    with open(args.text, encoding="utf-8") as handle:
        text = handle.read()
    rows = [run_row(name, ROWS[name], args, text) for name in args.rows.split(",")]
    base = rows[0]
    print(
        "| weights | perplexity | vs float32 | linear MB | x float32 | total weight MB "
        "| decode tok/s (batch 1) | x float32 | output tok/s (batch 32) | x float32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['name']} | {row['perplexity']:.3f} | "
            f"{row['perplexity'] / base['perplexity'] - 1:+.2%} | "
            f"{row['linear_bytes'] / 1e6:.1f} | {row['linear_bytes'] / base['linear_bytes']:.3f} | "
            f"{row['weight_bytes'] / 1e6:.1f} | {row['decode_tok_s_batch1']:.1f} | "
            f"{row['decode_tok_s_batch1'] / base['decode_tok_s_batch1']:.2f} | "
            f"{row['output_tok_s_batch32']:.1f} | "
            f"{row['output_tok_s_batch32'] / base['output_tok_s_batch32']:.2f} |"
        )
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
