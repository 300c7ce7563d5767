"""A tiny random Gemma 3 written as a Hugging Face directory, run by kaon and by transformers.

The sliding window (5 tokens) is much shorter than the prompts and the KV cache blocks are 4
tokens, so local layers drop whole blocks, start mid-block, and see prefill chunks with cached
context (a 16-token step budget splits the prompts). Tolerance: 1e-4 on logits of order 1 (both
run float32; they differ in summation order only).
"""

import json

import pytest
import torch

from kaon import LLM, SamplingParams

transformers = pytest.importorskip("transformers")

VOCAB_SIZE = 96
PROMPTS = [[2, *range(3, 40)], [2, 7, 7, 7, 9, 11, 13, 80, 81, 82, 5, 6], [2, *range(50, 95, 2)]]


@pytest.fixture(scope="module")
def tiny_gemma_dir(tmp_path_factory):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=6,  # layers 0-4 local, 5 global
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=5,
        max_position_embeddings=256,
        final_logit_softcapping=3.0,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # random norm weights: the (1 + w) convention must show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("tiny_gemma3")
    model.save_pretrained(path)
    vocab = {f"t{i}": i for i in range(VOCAB_SIZE)}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="t3"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "t2", "eos_token": "t1"}))
    return path, model


@pytest.fixture(scope="module")
def tiny_llm(tiny_gemma_dir):
    path, _ = tiny_gemma_dir
    engine = LLM(
        str(path),
        block_size=4,
        max_num_batched_tokens=16,
        kv_cache_memory_bytes=4_000_000,
        max_model_len=128,
    )
    yield engine
    engine.close()


def test_config_maps_gemma3_fields(tiny_llm):
    config = tiny_llm.engine.executor.model_runner.model.config
    assert config.architecture == "Gemma3ForCausalLM"
    assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert (config.sliding_window, config.rope_local_theta) == (5, 10_000.0)
    assert (config.query_pre_attn_scalar, config.final_logit_softcapping) == (16, 3.0)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_logits_match_transformers(tiny_gemma_dir, tiny_llm, prompt):
    _, model = tiny_gemma_dir
    ours = tiny_llm.engine.prompt_logits(prompt)
    with torch.no_grad():
        reference = model(torch.tensor([prompt])).logits[0]
    assert ours.shape == reference.shape == (len(prompt), VOCAB_SIZE)
    assert (ours - reference).abs().max().item() <= 1e-4


def test_batched_chunked_greedy_matches_transformers(tiny_gemma_dir, tiny_llm):
    """Three prompts at once, prefilled in 16-token chunks, 24 greedy tokens each (decodes run
    far past the window)."""
    _, model = tiny_gemma_dir
    params = SamplingParams(temperature=0, max_tokens=24, min_tokens=24)
    outputs = tiny_llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        with torch.no_grad():
            expected = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=24,
                min_new_tokens=24,
            )[0, len(prompt) :].tolist()
        assert output.outputs[0].token_ids == expected
