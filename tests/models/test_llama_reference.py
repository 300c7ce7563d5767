"""kaon's Llama vs Hugging Face transformers on the same GGUF, both in float32.

Tolerance: max |logit difference| <= 1e-3 over the whole vocabulary at every prompt position (the
two differ only in float32 summation order; we measure about 5e-5).
"""

import os

import pytest
import torch

from kaon.sampling_params import SamplingParams

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "In 2024, the population was 8,045,311 and rising 3.75% per year.",
    "Emoji: 😀🎉 and CJK: 中文字符 日本語, accents: café naïve. " * 3,
]


@pytest.fixture(scope="module")
def hf_model(default_gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(default_gguf_path),
        gguf_file=os.path.basename(default_gguf_path),
        dtype=torch.float32,
    ).eval()


def kaon_logits(llm, token_ids: list[int]) -> torch.Tensor:
    """One whole-prompt prefill through kaon's model and paged attention: [len, vocab]."""
    return llm.engine.prompt_logits(token_ids)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_first_forward_logits_match_transformers(reference_llm, hf_model, prompt):
    token_ids = reference_llm.tokenizer.encode(prompt)
    ours = kaon_logits(reference_llm, token_ids)
    with torch.no_grad():
        reference = hf_model(torch.tensor([token_ids])).logits[0].float()
    assert ours.shape == reference.shape == (len(token_ids), 49152)
    assert (ours - reference).abs().max().item() <= 1e-3


def test_greedy_64_token_continuations_match_transformers(llm, hf_model):
    prompt_ids = [llm.tokenizer.encode(prompt) for prompt in PROMPTS]
    # min_tokens masks end-of-text exactly as transformers' min_new_tokens does.
    params = SamplingParams(temperature=0, max_tokens=64, min_tokens=64)
    outputs = llm.generate(prompt_ids, params, use_tqdm=False)
    for token_ids, output in zip(prompt_ids, outputs, strict=True):
        with torch.no_grad():
            generated = hf_model.generate(
                torch.tensor([token_ids]),
                attention_mask=torch.ones(1, len(token_ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=64,
                min_new_tokens=64,
            )[0, len(token_ids) :].tolist()
        assert output.outputs[0].token_ids == generated
