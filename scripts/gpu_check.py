"""The one prepared GPU run of issue 17: kaon's CUDA path against transformers on the same GPU.

Run by ``scripts/gpu_check.sh`` (which installs the carried wheels first); ``--toy`` runs every
phase on a tiny shape (the CPU dry run). Nothing is downloaded: the model is a Llama-architecture
checkpoint with seeded random weights written here (``write_random_llama``), with the default
model's tokenizer (SmolLM2, 49,152 ids < the 128,256-id vocabulary) beside it. Prompts are token
ids, outputs are read as ids (``detokenize=False``).

Phases (each recorded in ``results.json`` as soon as it ends, so a run cut short still reports):

1. ``float32``: kaon vs transformers, whole-prompt prefill logits, float32 (<= 1e-3).
2. ``float32`` / ``bfloat16``: 16 greedy continuations, batched == one by one.
3. ``logits_bfloat16``: kaon bf16 vs transformers f32, beside transformers bf16 vs f32; the stated
   tolerance: kaon's error <= 2 x transformers' own bf16 error + 0.02.
4. ``throughput``: N prompts x M output tokens (ignore_eos), kaon ``LLM.generate`` (CUDA graphs)
   vs transformers ``generate`` with left-padded batches, both bf16; output tokens/s.
5. ``decode``: single-stream decode tok/s with graphs on and off (``--enforce-eager``) against
   the HBM floor ``weight_bytes / 4.8 TB/s``; also one graph replay alone (forward + LM head).

Usage: python scripts/gpu_check.py --out DIR [--toy] [--device auto|cuda|cpu] --tokenizer DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

HBM_BYTES_PER_SECOND = 4.8e12  # H200 datasheet


@dataclass
class Shape:
    """A Llama-architecture shape; ``FULL`` is Llama 3.2 1B's (tied embeddings, GQA 32/8)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int


FULL = Shape(2048, 16, 32, 8, 8192, 128256)
TOY = Shape(64, 2, 4, 2, 128, 512)


@dataclass
class Sizes:
    """How much work each phase does."""

    num_logit_prompts: int = 4
    num_greedy: int = 16
    greedy_tokens: int = 32
    num_throughput_prompts: int = 256
    throughput_tokens: int = 128
    hf_batch_size: int = 256
    decode_tokens: int = 256
    max_model_len: int = 1024


FULL_SIZES = Sizes()
TOY_SIZES = Sizes(2, 16, 8, 12, 8, 6, 16, 256)


# -- the checkpoint ---------------------------------------------------------------------------


def write_random_llama(
    directory: Path, shape: Shape, tokenizer_dir: Path, device: torch.device, seed: int = 0
) -> int:
    """Write a Hugging Face Llama directory with seeded random bfloat16 weights (normal, std
    0.02; norms 1) and the tokenizer files of ``tokenizer_dir``; returns the weight bytes."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    head_dim = shape.hidden_size // shape.num_attention_heads
    kv_size = shape.num_key_value_heads * head_dim

    def normal(*size: int) -> torch.Tensor:
        weight = torch.empty(size, device=device, dtype=torch.float32)
        return weight.normal_(0.0, 0.02, generator=generator).to(torch.bfloat16).cpu()

    hidden, inter = shape.hidden_size, shape.intermediate_size
    ones = torch.ones(hidden, dtype=torch.bfloat16)
    tensors = {"model.embed_tokens.weight": normal(shape.vocab_size, hidden)}
    for layer in range(shape.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        tensors |= {
            prefix + "self_attn.q_proj.weight": normal(hidden, hidden),
            prefix + "self_attn.k_proj.weight": normal(kv_size, hidden),
            prefix + "self_attn.v_proj.weight": normal(kv_size, hidden),
            prefix + "self_attn.o_proj.weight": normal(hidden, hidden),
            prefix + "mlp.gate_proj.weight": normal(inter, hidden),
            prefix + "mlp.up_proj.weight": normal(inter, hidden),
            prefix + "mlp.down_proj.weight": normal(hidden, inter),
            prefix + "input_layernorm.weight": ones.clone(),
            prefix + "post_attention_layernorm.weight": ones.clone(),
        }
    tensors["model.norm.weight"] = ones.clone()
    save_file(tensors, str(directory / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **asdict(shape),
        "head_dim": head_dim,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, directory / name)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def make_prompts(count: int, vocab: int, seed: int, min_len: int = 16, max_len: int = 64):
    """``count`` prompts of random ids in [10, min(vocab, 49152)), lengths in [min_len, max_len]."""
    generator = torch.Generator().manual_seed(seed)
    high = min(vocab, 49152)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=generator).tolist()
    return [torch.randint(10, high, (n,), generator=generator).tolist() for n in lengths]


# -- engines ----------------------------------------------------------------------------------


def kaon_llm(model_dir: Path, device: str, dtype: str, sizes: Sizes, **options):
    from kaon import LLM

    return LLM(
        str(model_dir), device=device, dtype=dtype, max_model_len=sizes.max_model_len,
        max_num_batched_tokens=4096, enable_prefix_caching=False, **options,
    )  # fmt: skip


def greedy(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from kaon import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


def hf_model(model_dir: Path, dtype: torch.dtype, device: torch.device):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    return model.to(device).eval()


def release(*objects) -> None:
    for obj in objects:
        if hasattr(obj, "close"):
            obj.close()
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- phases -----------------------------------------------------------------------------------


class Check:
    """Runs the phases in order, recording each result (or its error) and rewriting the report
    after each; phases past ``budget_s`` are skipped."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.toy = args.toy
        self.shape = TOY if args.toy else FULL
        self.sizes = TOY_SIZES if args.toy else FULL_SIZES
        self.device = torch.device(
            args.device
            if args.device != "auto"
            else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.model_dir = self.work / "model"
        self.start = time.perf_counter()
        self.results: dict[str, object] = {"environment": environment(self.device), "phases": {}}
        self.hf_float32_logits: list[torch.Tensor] = []
        self.weight_bytes = 0

    def run(self) -> int:
        phases = [
            ("build_model", self.build_model),
            ("float32", self.float32_engine),
            ("bfloat16", self.bfloat16_engine),
            ("decode_eager", self.decode_eager),
            ("hf_throughput", self.hf_throughput),
        ]
        for name, phase in phases:
            elapsed = time.perf_counter() - self.start
            if elapsed > self.args.budget_s:
                self.record(name, {"skipped": f"time budget: {elapsed:.0f} s elapsed"})
                continue
            print(f"[gpu_check] {name} (at {elapsed:.0f} s)", flush=True)
            phase_start = time.perf_counter()
            try:
                result = phase() or {}
            except Exception as error:  # record and go on: one broken phase must not hide the rest
                result = {"error": repr(error), "traceback": traceback.format_exc()[-3000:]}
                print(result["traceback"], file=sys.stderr, flush=True)
            result["seconds"] = round(time.perf_counter() - phase_start, 1)
            self.record(name, result)
        self.results["verdict"] = verdict(self.results["phases"], self.toy)
        self.write()
        print(render_markdown(self.results), flush=True)
        failed = [name for name, phase in self.results["phases"].items() if "error" in phase]
        return 1 if failed else 0

    def record(self, name: str, result: dict) -> None:
        self.results["phases"][name] = result
        self.results["total_seconds"] = round(time.perf_counter() - self.start, 1)
        self.write()

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "results.md").write_text(render_markdown(self.results))

    # -- phase bodies

    def build_model(self) -> dict:
        if self.model_dir.exists():
            shutil.rmtree(self.model_dir)
        self.weight_bytes = write_random_llama(
            self.model_dir, self.shape, Path(self.args.tokenizer), self.device
        )
        floor = self.weight_bytes / HBM_BYTES_PER_SECOND
        return {"shape": asdict(self.shape), "weight_bytes": self.weight_bytes,
                "hbm_floor_ms_per_token": round(floor * 1e3, 4),
                "hbm_floor_tokens_per_s": round(1 / floor, 1)}  # fmt: skip

    def float32_engine(self) -> dict:
        """transformers' float32 logits (kept for the bf16 comparison), then one kaon float32
        engine (CUDA graphs on unless on CPU): its logits, and greedy batched == alone."""
        prompts = make_prompts(self.sizes.num_logit_prompts, self.shape.vocab_size, seed=1)
        model = hf_model(self.model_dir, torch.float32, self.device)
        with torch.no_grad():
            for ids in prompts:
                logits = model(torch.tensor([ids], device=self.device)).logits[0].float().cpu()
                self.hf_float32_logits.append(logits)
        release(model)
        llm = kaon_llm(self.model_dir, self.device.type, "float32", self.sizes,
                       max_num_seqs=16, kv_cache_memory_bytes=2 * 1024**3)  # fmt: skip
        try:
            diffs = [
                (llm.engine.prompt_logits(ids).float().cpu() - reference).abs().max().item()
                for ids, reference in zip(prompts, self.hf_float32_logits, strict=True)
            ]
            logits = {"max_abs_diff": max(diffs), "tolerance": 1e-3, "passed": max(diffs) <= 1e-3,
                      "prompt_lengths": [len(p) for p in prompts]}  # fmt: skip
            return {"logits": logits, "greedy": self.greedy_phase(llm)}
        finally:
            release(llm)

    def greedy_phase(self, llm) -> dict:
        prompts = make_prompts(self.sizes.num_greedy, self.shape.vocab_size, seed=2)
        batched = greedy(llm, prompts, self.sizes.greedy_tokens)
        alone = [greedy(llm, [prompt], self.sizes.greedy_tokens)[0] for prompt in prompts]
        graphs = graph_info(llm)
        equal = sum(a == b for a, b in zip(batched, alone, strict=True))
        first_diff = [
            next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
            for a, b in zip(batched, alone, strict=True)
        ]
        return {"equal": equal, "of": len(prompts), "passed": equal == len(prompts),
                "first_difference_at": first_diff, "cuda_graphs": graphs}  # fmt: skip

    def bfloat16_engine(self) -> dict:
        """One bf16 engine (CUDA graphs on unless on CPU): logits, greedy, throughput, decode."""
        sizes = self.sizes
        options = {"max_num_seqs": sizes.num_throughput_prompts}
        if self.device.type == "cuda":
            options["kv_cache_memory_fraction"] = 0.25  # of the free memory after the weights
        else:
            options["kv_cache_memory_bytes"] = 256 * 1024**2
        llm = kaon_llm(self.model_dir, self.device.type, "bfloat16", sizes, **options)
        from kaon.attention import triton_decode

        result: dict[str, object] = {
            "cuda_graphs": graph_info(llm),
            "triton_decode_attention": (
                triton_decode.self_test(self.device) if self.device.type == "cuda" else "n/a"
            ),
        }
        try:
            result["logits_bfloat16"] = self.logits_bfloat16(llm)
            result["greedy_bfloat16"] = self.greedy_phase(llm)
            result["throughput"] = self.kaon_throughput(llm)
            result["decode"] = self.single_stream(llm)
            result["graph_replay"] = graph_replay_timing(llm, self.device)
        finally:
            release(llm)
        return result

    def logits_bfloat16(self, llm) -> dict:
        prompts = make_prompts(self.sizes.num_logit_prompts, self.shape.vocab_size, seed=1)
        if not self.hf_float32_logits:
            return {"skipped": "no float32 reference logits"}
        ours = [llm.engine.prompt_logits(ids).float().cpu() for ids in prompts]
        model = hf_model(self.model_dir, torch.bfloat16, self.device)
        with torch.no_grad():
            theirs = [
                model(torch.tensor([ids], device=self.device)).logits[0].float().cpu()
                for ids in prompts
            ]
        release(model)
        reference = self.hf_float32_logits
        kaon_error = max((a - r).abs().max().item() for a, r in zip(ours, reference, strict=True))
        hf_error = max((a - r).abs().max().item() for a, r in zip(theirs, reference, strict=True))
        top1 = [
            (a.argmax(-1) == r.argmax(-1)).float().mean().item()
            for a, r in zip(ours, reference, strict=True)
        ]
        tolerance = 2 * hf_error + 0.02
        return {"kaon_bf16_vs_hf_f32": kaon_error, "hf_bf16_vs_hf_f32": hf_error,
                "tolerance": tolerance, "passed": kaon_error <= tolerance,
                "top1_agreement_with_f32": min(top1)}  # fmt: skip

    def kaon_throughput(self, llm) -> dict:
        sizes = self.sizes
        prompts = make_prompts(sizes.num_throughput_prompts, self.shape.vocab_size, seed=3)
        greedy(llm, prompts[:8], 4)  # warm-up (prefill shapes, sampler)
        synchronize(self.device)
        start = time.perf_counter()
        outputs = greedy(llm, prompts, sizes.throughput_tokens)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        num_tokens = sum(len(ids) for ids in outputs)
        assert num_tokens == len(prompts) * sizes.throughput_tokens
        return {"prompts": len(prompts), "output_tokens": num_tokens, "seconds": seconds,
                "output_tokens_per_s": num_tokens / seconds,
                "prompt_tokens": sum(len(p) for p in prompts)}  # fmt: skip

    def single_stream(self, llm) -> dict:
        """Decode tok/s of one request: (time of 1 + n tokens - time of 1 token) / n."""
        prompt = make_prompts(1, self.shape.vocab_size, seed=4, min_len=32, max_len=32)
        greedy(llm, prompt, 8)  # warm-up
        timings = []
        for max_tokens in (1, 1 + self.sizes.decode_tokens):
            synchronize(self.device)
            start = time.perf_counter()
            greedy(llm, prompt, max_tokens)
            synchronize(self.device)
            timings.append(time.perf_counter() - start)
        per_token = (timings[1] - timings[0]) / self.sizes.decode_tokens
        floor = self.weight_bytes / HBM_BYTES_PER_SECOND
        return {"tokens_per_s": 1 / per_token, "ms_per_token": per_token * 1e3,
                "fraction_of_hbm_floor": floor / per_token if floor else None}  # fmt: skip

    def decode_eager(self) -> dict:
        options = {"max_num_seqs": 16, "kv_cache_memory_bytes": 1024**3, "enforce_eager": True}
        llm = kaon_llm(self.model_dir, self.device.type, "bfloat16", self.sizes, **options)
        try:
            return {"cuda_graphs": graph_info(llm), "decode": self.single_stream(llm)}
        finally:
            release(llm)

    def hf_throughput(self) -> dict:
        """transformers ``generate``, greedy, left-padded batches of ``hf_batch_size``."""
        sizes = self.sizes
        prompts = make_prompts(sizes.num_throughput_prompts, self.shape.vocab_size, seed=3)
        model = hf_model(self.model_dir, torch.bfloat16, self.device)
        try:
            self.hf_generate(model, prompts[:8], 4)  # warm-up
            synchronize(self.device)
            start = time.perf_counter()
            num_tokens = 0
            for first in range(0, len(prompts), sizes.hf_batch_size):
                batch = prompts[first : first + sizes.hf_batch_size]
                num_tokens += self.hf_generate(model, batch, sizes.throughput_tokens)
            synchronize(self.device)
            seconds = time.perf_counter() - start
            single = make_prompts(1, self.shape.vocab_size, seed=4, min_len=32, max_len=32)
            timings = []
            for max_tokens in (1, 1 + sizes.decode_tokens):
                synchronize(self.device)
                tick = time.perf_counter()
                self.hf_generate(model, single, max_tokens)
                synchronize(self.device)
                timings.append(time.perf_counter() - tick)
        finally:
            release(model)
        per_token = (timings[1] - timings[0]) / sizes.decode_tokens
        return {"prompts": len(prompts), "batch_size": sizes.hf_batch_size,
                "output_tokens": num_tokens, "seconds": seconds,
                "output_tokens_per_s": num_tokens / seconds,
                "single_stream_tokens_per_s": 1 / per_token}  # fmt: skip

    def hf_generate(self, model, prompts: list[list[int]], max_new_tokens: int) -> int:
        longest = max(len(p) for p in prompts)
        input_ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        attention_mask = torch.zeros(len(prompts), longest, dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding, as decoder-only generation needs
            input_ids[row, longest - len(ids) :] = torch.tensor(ids)
            attention_mask[row, longest - len(ids) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                pad_token_id=0,
            )  # fmt: skip
        return (output.shape[1] - longest) * len(prompts)


def graph_info(llm) -> dict:
    graphs = llm.engine.executor.driver.model_runner.cuda_graphs
    if graphs is None:
        return {"enabled": False}
    return {"enabled": True, "sizes": graphs.sizes, "replays": graphs.num_replays}


def graph_replay_timing(llm, device: torch.device, repeats: int = 100) -> dict:
    """One captured batch-1 decode forward replayed alone, plus the LM head: the model's own
    decode time without the engine's per-step host work."""
    runner = llm.engine.executor.driver.model_runner
    graphs = runner.cuda_graphs
    if graphs is None or device.type != "cuda":
        return {"skipped": "no CUDA graphs"}
    with torch.inference_mode():
        graph, output = graphs.graphs[1], graphs.outputs[1]
        for _ in range(5):
            graph.replay()
        start_event = torch.cuda.Event(enable_timing=True)
        end_event = torch.cuda.Event(enable_timing=True)
        start_event.record()
        for _ in range(repeats):
            graph.replay()
        end_event.record()
        torch.cuda.synchronize(device)
        replay_ms = start_event.elapsed_time(end_event) / repeats
        start_event.record()
        for _ in range(repeats):
            graph.replay()
            runner.model.compute_logits(output).argmax(-1)
        end_event.record()
        torch.cuda.synchronize(device)
        with_head_ms = start_event.elapsed_time(end_event) / repeats
    return {"forward_ms": replay_ms, "forward_and_lm_head_ms": with_head_ms,
            "tokens_per_s": 1e3 / with_head_ms}  # fmt: skip


def environment(device: torch.device) -> dict:
    info: dict[str, object] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    for name in ("transformers", "triton", "tokenizers", "safetensors", "llguidance"):
        try:
            info[name] = __import__(name).__version__
        except Exception as error:  # recorded, not fatal: the phases say what they need
            info[name] = f"unavailable: {error!r}"
    return info


def verdict(phases: dict, toy: bool) -> dict:
    """The issue's targets, each True/False (None when its phase did not produce the number)."""

    def get(*path):
        node = phases
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    kaon_tps = get("bfloat16", "throughput", "output_tokens_per_s")
    hf_tps = get("hf_throughput", "output_tokens_per_s")
    fraction = get("bfloat16", "decode", "fraction_of_hbm_floor")
    return {
        "logits_float32_le_1e-3": get("float32", "logits", "passed"),
        "logits_bfloat16_within_stated_tolerance": get("bfloat16", "logits_bfloat16", "passed"),
        "greedy_float32_16_of_16": get("float32", "greedy", "passed"),
        "greedy_bfloat16_16_of_16": get("bfloat16", "greedy_bfloat16", "passed"),
        "throughput_ge_3x_transformers": (
            None if kaon_tps is None or not hf_tps else kaon_tps >= 3 * hf_tps
        ),
        "throughput_ratio": None if kaon_tps is None or not hf_tps else kaon_tps / hf_tps,
        "single_stream_ge_0.6_hbm_floor": (None if fraction is None or toy else fraction >= 0.6),
    }


def render_markdown(results: dict) -> str:
    lines = ["# kaon GPU check (scripts/gpu_check.sh)", ""]
    env = results.get("environment", {})
    lines.append(" | ".join(f"{key}: {value}" for key, value in env.items()))
    lines += ["", "## Verdict", ""]
    for key, value in (results.get("verdict") or {}).items():
        lines.append(f"- {key}: {_fmt(value)}")
    lines += ["", "## Phases", ""]
    for name, phase in results.get("phases", {}).items():
        lines.append(f"### {name}")
        lines.append("```")
        lines.append(json.dumps(phase, indent=1, default=_fmt)[:4000])
        lines.append("```")
    lines.append(f"total: {results.get('total_seconds')} s")
    return "\n".join(lines) + "\n"


def _fmt(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/kaon_gpu_check")
    parser.add_argument("--tokenizer", required=True, help="folder with tokenizer.json")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--toy", action="store_true", help="tiny shape and sizes (CPU dry run)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip phases after this")
    return Check(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
