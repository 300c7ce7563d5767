"""Every quantization scheme end to end on the default model: greedy decoding stays close to
float32's, perplexity barely moves, and the KV cache dtype option works.

Figures observed here (8 prompts; prompts whose first greedy token / first 4 greedy tokens equal
float32's; perplexity on TEXT, windows of 48 tokens, stride 24, float32 28.488):

    gguf-native 8/8, 8/8, 28.177 (-1.1%)  quantization auto: the file's Q4_1 layers and Q8_0 LM head
                                           run as blocks (kaon/kernels/gguf_matmul.cpp)
    int8        8/8, 7/8, 28.670 (+0.6%)
    int4 g32    7/8, 4/8, 29.702 (+4.3%)  GGUF-native: the layers hold exactly float32's weights;
                                           the int4 LM head (from the Q8_0 embedding) and bfloat16
                                           GEMMs flip near-ties (min-max head: 5/8, 3/8, 27.689)
    int4 g128   5/8, 4/8, 52.032 (1.8x)   Q4_1 values re-quantized to g128/g64 (least-squares
                                           refit, quantization/int4_rounding.py; min-max: 63.487)
    KV bf16     8/8, 8/8, 28.488 (=)      (prefill of these short windows never reads the cache)

The thresholds in ``SCHEMES`` sit at or a little under these figures.
"""

from __future__ import annotations

import math

import pytest
import torch

from kaon.eval.perplexity import evaluate_perplexity, sliding_windows
from kaon.sampling_params import SamplingParams
from tests.conftest import ENGINE_TEST_OPTIONS, assert_all_blocks_free
from tests.models.test_llama_reference import kaon_logits

PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return",
    "Once upon a time, there was a",
    "The three primary colors are",
    "Water boils at a temperature of",
    "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n",
    "1, 2, 3, 4, 5,",
    "The largest planet in the solar system is",
]
NUM_TOKENS = 8
TEXT = (
    "The GNU General Public License is a free, copyleft license for software and other kinds of "
    "works. The licenses for most software and other practical works are designed to take away "
    "your freedom to share and change the works. By contrast, the GNU General Public License is "
    "intended to guarantee your freedom to share and change all versions of a program."
)
# scheme -> (engine options, minimum prompts of 8 whose first greedy token / first 4 greedy tokens
# equal float32's, perplexity ratio to float32 allowed on TEXT). int4 g128 (g64 on the 576-wide
# layers) re-quantizes the file's Q4_1 values onto a coarser grid: two roundings stack, and on
# this 135M model that measured 1.8x float32's perplexity on TEXT (52.0 vs 28.5; min-max 63.5).
SCHEMES = {
    "gguf-native": ({"quantization": "auto"}, 7, 6, 1.03),
    "int8": ({"quantization": "int8"}, 7, 6, 1.02),
    "int4-g32": ({"quantization": "int4", "quantization_group_size": 32}, 4, 2, 1.05),
    "int4-g128": ({"quantization": "int4", "quantization_group_size": 128}, 4, 2, 2.5),
    "kv-bf16": ({"kv_cache_dtype": "bfloat16"}, 7, 7, 1.01),
}


def _greedy(llm) -> list[list[int]]:
    params = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def float_reference(llm):
    ids = llm.tokenizer.encode(TEXT, add_special_tokens=False)
    return _greedy(llm), evaluate_perplexity(llm, ids, 48, 24).perplexity


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_scheme_end_to_end(scheme: str, float_reference) -> None:
    from kaon import LLM

    options, min_first, min_matching, max_ratio = SCHEMES[scheme]
    reference_tokens, reference_ppl = float_reference
    quantized = LLM(**{**ENGINE_TEST_OPTIONS, **options})
    tokens = _greedy(quantized)
    assert all(len(t) == NUM_TOKENS for t in tokens)
    pairs = list(zip(tokens, reference_tokens, strict=True))
    first = sum(a[0] == b[0] for a, b in pairs)
    matching = sum(a[:4] == b[:4] for a, b in pairs)
    ids = quantized.tokenizer.encode(TEXT, add_special_tokens=False)
    ppl = evaluate_perplexity(quantized, ids, 48, 24).perplexity
    print(f"FIGURE {scheme}: first token {first}/8, first 4 tokens {matching}/8, "
          f"ppl {ppl:.3f} vs float32 {reference_ppl:.3f}")  # fmt: skip
    assert first >= min_first, (scheme, first, tokens, reference_tokens)
    assert matching >= min_matching, (scheme, matching, tokens, reference_tokens)
    assert reference_ppl * 0.97 < ppl < reference_ppl * max_ratio, (scheme, ppl, reference_ppl)
    assert_all_blocks_free(quantized)
    if "quantization" in options:
        head = quantized.engine.executor.model_runner.model.lm_head
        assert not isinstance(head, torch.Tensor)  # the LM head is quantized too


@pytest.mark.parametrize("bos", [None, 1], ids=["no-bos", "bos"])
def test_perplexity_equals_direct_computation(llm, bos) -> None:
    """evaluate_perplexity (engine prompt logprobs, chunked, several windows) equals a direct
    whole-window forward: log_softmax of the logits at the same positions (relative 1e-4); with
    a BOS id every window's prompt starts with it and the text's first token is scored too."""
    ids = llm.tokenizer.encode(TEXT, add_special_tokens=False)
    window, stride = 40, 16
    result = evaluate_perplexity(llm, ids, window, stride, bos)
    prefix = [] if bos is None else [bos]
    total, count = 0.0, 0
    for begin, end, first in sliding_windows(len(ids), window, stride, bos is not None):
        logits = kaon_logits(llm, prefix + ids[begin:end])
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        for position in range(first, end):  # the logits one prompt index before the token's
            total -= logprobs[position - begin - 1 + len(prefix), ids[position]].item()
            count += 1
    assert result.num_tokens == count == len(ids) - 1 + len(prefix)
    assert math.isclose(result.perplexity, math.exp(total / count), rel_tol=1e-4)
    assert 5.0 < result.perplexity < 60.0  # fluent English under a 135M model


def test_sliding_windows_score_each_token_once() -> None:
    windows = sliding_windows(10, 4, 3)
    assert windows == [(0, 4, 1), (3, 7, 4), (6, 10, 7)]
    scored = [p for _, end, first in windows for p in range(first, end)]
    assert scored == list(range(1, 10))
    # with a BOS token before every window, the first text token has context and is scored
    windows = sliding_windows(10, 4, 3, with_bos=True)
    assert windows == [(0, 4, 0), (3, 7, 4), (6, 10, 7)]
    assert [p for _, end, first in windows for p in range(first, end)] == list(range(10))
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, 4, 5)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"quantization": "int3"}, "quantization"),
        ({"quantization": "int4", "quantization_group_size": 48}, "quantization_group_size"),
        ({"kv_cache_dtype": "int2"}, "kv_cache_dtype"),
    ],
)
def test_bad_values_name_the_field(options: dict, field: str) -> None:
    from kaon import LLM

    with pytest.raises(ValueError, match=f"^{field} must be"):
        LLM(**options)


def test_perplexity_cli(reference_llm, tmp_path) -> None:
    """``kaon eval perplexity`` prints the figures evaluate_perplexity computes in-process."""
    import os
    import subprocess
    import sys

    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    command = [sys.executable, "-m", "kaon", "eval", "perplexity", str(path), "--window", "32",
               "--stride", "16", "--kv-cache-memory", "50M", "--quantization", "none"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=dict(os.environ), check=True
    )
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    ids = reference_llm.tokenizer.encode(TEXT, add_special_tokens=False)
    expected = evaluate_perplexity(reference_llm, ids, 32, 16)
    assert int(lines["tokens evaluated"]) == expected.num_tokens == len(ids) - 1
    assert float(lines["perplexity"]) == pytest.approx(expected.perplexity, abs=2e-3)
    assert "tokens/s" in lines["throughput"]
    assert lines["BOS per window"].strip() == "no"  # SmolLM2's tokenizer adds no BOS
