"""kaon's Gemma 3 vs Hugging Face transformers on the same GGUF (gemma-3-270m Q4_K_M), both with
the weights dequantized to float32.

Tolerance: max |logit difference| <= 1e-3 over the whole vocabulary at every prompt position. The
last prompt is longer than the 512-token sliding window, so the local layers drop blocks.
"""

import os

import pytest
import torch

from kaon.sampling_params import SamplingParams

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Emoji: 😀🎉 and CJK: 中文字符 日本語, accents: café naïve. In 2024, 8,045,311 people.",
    "The GNU General Public License is a free, copyleft license for software and other kinds "
    "of works. " * 40,
]


@pytest.fixture(scope="module")
def hf_gemma(gemma3_gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gemma3_gguf_path),
        gguf_file=os.path.basename(gemma3_gguf_path),
        dtype=torch.float32,
    ).eval()


def test_long_prompt_exceeds_the_sliding_window(gemma3_llm):
    config = gemma3_llm.engine.executor.model_runner.model.config
    assert config.sliding_window == 512
    assert len(gemma3_llm.tokenizer.encode(PROMPTS[-1])) > config.sliding_window


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_logits_match_transformers(gemma3_llm, hf_gemma, prompt):
    token_ids = gemma3_llm.tokenizer.encode(prompt)
    assert token_ids[0] == 2  # <bos>
    ours = gemma3_llm.engine.prompt_logits(token_ids)
    with torch.no_grad():
        reference = hf_gemma(torch.tensor([token_ids])).logits[0].float()
    assert ours.shape == reference.shape == (len(token_ids), 262144)
    assert (ours - reference).abs().max().item() <= 1e-3


def test_greedy_64_token_continuations_match_transformers(gemma3_llm, hf_gemma):
    # The chat prompt and the one past the sliding window: transformers' generate over a
    # 262k vocabulary costs minutes per prompt on 2 cores (all 5 prompts were checked once:
    # BENCHMARKS.md, Gemma 3).
    prompt_ids = [gemma3_llm.tokenizer.encode(prompt) for prompt in (PROMPTS[1], PROMPTS[-1])]
    params = SamplingParams(temperature=0, max_tokens=64, min_tokens=64)
    outputs = gemma3_llm.generate(prompt_ids, params, use_tqdm=False)
    for token_ids, output in zip(prompt_ids, outputs, strict=True):
        with torch.no_grad():
            generated = hf_gemma.generate(
                torch.tensor([token_ids]),
                attention_mask=torch.ones(1, len(token_ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=64,
                min_new_tokens=64,
            )[0, len(token_ids) :].tolist()
        assert output.outputs[0].token_ids == generated
