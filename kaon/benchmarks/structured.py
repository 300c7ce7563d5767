"""``kaon bench structured``: grammar compile times of the structured-output test schemas.

For each schema of ``kaon.benchmarks.structured_schemas``: the admission check (schema ->
llguidance grammar, validated; runs on the engine loop), the compile (LLMatcher for the model's
tokenizer; runs on the compile thread pool), and a second, cached request. The llguidance
tokenizer is built once first and timed apart. Needs only the tokenizer, not the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from kaon.benchmarks.structured_schemas import BENCH_SCHEMA, SCHEMAS
from kaon.sampling_params import StructuredOutputsParams


def add_structured_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", default=None, help="GGUF file or HF directory (default: the default model)"
    )
    parser.add_argument("--output-json", default=None, help="write all times (seconds) here")


def run_structured(args: argparse.Namespace) -> int:
    from kaon.benchmarks.serve import load_tokenizer
    from kaon.structured_outputs import StructuredOutputManager
    from kaon.structured_outputs.grammar import grammar_from_params

    tokenizer = load_tokenizer(args.tokenizer)
    manager = StructuredOutputManager(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_ids)
    start = time.perf_counter()
    manager.ll_tokenizer()
    tokenizer_s = time.perf_counter() - start
    rows = []
    for name, schema in {**SCHEMAS, "bench_schema": BENCH_SCHEMA}.items():
        params = StructuredOutputsParams(json=schema)
        start = time.perf_counter()
        grammar = grammar_from_params(params)
        validate_s = time.perf_counter() - start
        manager.create_request(name, params).wait()
        start = time.perf_counter()
        manager.create_request(name + "-again", params).wait()  # a cache hit
        cached_s = time.perf_counter() - start
        rows.append((name, validate_s, manager.compile_seconds[grammar], cached_s))
    manager.shutdown()
    print(f"llguidance tokenizer build: {tokenizer_s * 1e3:.1f} ms")
    print(f"{'schema':22s} {'validate ms':>12s} {'compile ms':>11s} {'cached ms':>10s}")
    for name, validate_s, compile_s, cached_s in rows:
        print(f"{name:22s} {validate_s * 1e3:12.3f} {compile_s * 1e3:11.3f} {cached_s * 1e3:10.3f}")
    compiles = [row[2] for row in rows]
    print(
        f"compile over {len(rows)} schemas: median {statistics.median(compiles) * 1e3:.2f} ms, "
        f"max {max(compiles) * 1e3:.2f} ms"
    )
    if args.output_json:
        with open(args.output_json, "w") as file:
            json.dump({"tokenizer_s": tokenizer_s, "schemas": rows}, file, indent=1)
    return 0
