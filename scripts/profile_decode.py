"""Break one decode step of the default model into GEMM / attention / small ops / Python, in ms.

    python scripts/profile_decode.py [--batch-sizes 1 8 32] [--steps 20] [--quantization none]

For each batch size: queue that many requests (32-token prompts, ``ignore_eos``), run their
prefills, then time ``--steps`` decode steps of ``LLMEngine.step`` with wall-clock timers
around the stages (the median per step is reported):

    GEMM        every ``linear`` of the decoder layers + the LM head (``compute_logits``)
    attention   ``paged_attention`` (decode attention over the paged KV cache)
    small ops   the rest of the model's forward: embedding, RMSNorm, RoPE + KV write, SwiGLU,
                residual adds, and the Python of the layer loop
    sampler     ``Sampler`` (penalties, temperature, argmax / sampling) and its one host sync
    Python      the rest of the step: scheduler, ``InputBatch.build`` (input preparation, also
                shown on its own), sampling metadata, output processing and detokenization

The timers wrap kaon's functions in this process only (about 1 us each, ~150 calls per step);
nothing in kaon is changed. The shares are what matters: on a shared machine the absolute
times move with the other jobs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

from kaon import LLM, SamplingParams
from kaon.models import llama
from kaon.worker import model_runner as runner_module

_totals: defaultdict[str, float] = defaultdict(float)


def _timed(name: str, function: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _totals[name] += time.perf_counter() - start

    return wrapper


def _install_timers(llm: LLM) -> None:
    llama.linear = _timed("gemm_layers", llama.linear)
    llama.paged_attention = _timed("attention", llama.paged_attention)
    runner = llm.engine.executor.model_runner
    model = runner.model
    model.forward = _timed("forward", model.forward)
    model.compute_logits = _timed("lm_head", model.compute_logits)
    runner.sampler = _timed("sampler", runner.sampler)
    build = runner_module.InputBatch.build
    runner_module.InputBatch = type(
        "TimedInputBatch", (), {"build": staticmethod(_timed("input_prep", build))}
    )


def _profile_batch(llm: LLM, batch_size: int, num_steps: int) -> dict[str, float]:
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=num_steps + 8, ignore_eos=True)
    prompt = [1 + (i * 37) % 5000 for i in range(32)]
    for index in range(batch_size):
        engine.add_request(f"profile-{batch_size}-{index}", {"prompt_token_ids": prompt}, params)
    for _ in range(3):  # prefills (one step for up to 32 x 32 tokens) and a warm-up decode
        engine.step()
    per_step: defaultdict[str, list[float]] = defaultdict(list)
    for _ in range(num_steps):
        _totals.clear()
        start = time.perf_counter()
        engine.step()
        _totals["step"] = time.perf_counter() - start
        for name in ("step", "forward", "gemm_layers", "attention", "lm_head", "sampler",
                     "input_prep"):  # fmt: skip
            per_step[name].append(_totals[name] * 1e3)
    while engine.has_unfinished_requests():
        engine.step()
    return {name: statistics.median(values) for name, values in per_step.items()}


def _row(batch_size: int, t: dict[str, float]) -> str:
    gemm = t["gemm_layers"] + t["lm_head"]
    small = t["forward"] - t["gemm_layers"] - t["attention"]
    python = t["step"] - t["forward"] - t["lm_head"] - t["sampler"]
    cells = [t["step"], gemm, t["lm_head"], t["attention"], small, t["sampler"], python,
             t["input_prep"]]  # fmt: skip
    shares = f"{gemm / t['step']:.2f} / {t['attention'] / t['step']:.2f} / "
    shares += f"{small / t['step']:.2f} / {(python + t['sampler']) / t['step']:.2f}"
    return f"| {batch_size} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {shares} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=20, help="decode steps timed per batch size")
    parser.add_argument("--quantization", default="none")
    args = parser.parse_args()
    llm = LLM(kv_cache_memory_bytes=200_000_000, quantization=args.quantization)
    _install_timers(llm)
    print("| batch | step ms | GEMM ms | (of which LM head) | attention ms | small ops ms | "
          "sampler ms | Python ms | (of which input prep) | "
          "GEMM / attn / small / Python+sampler |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch_size in args.batch_sizes:
        print(_row(batch_size, _profile_batch(llm, batch_size, args.steps)), flush=True)


if __name__ == "__main__":
    main()
