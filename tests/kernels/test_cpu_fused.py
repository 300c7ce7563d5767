"""The fused float32 CPU kernels against the torch code they replace (their reference).

Row counts 1 (a decode), 7 and 300 (a prefill split across threads); values must match within
2e-6 (float32 rounding of a 576-wide reduction), the residual update and the KV cache copy exactly.
A whole-model check compares logits with the kernels on and off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kaon.attention.torch_backend import write_kv_cache
from kaon.kernels import cpu_fused
from kaon.layers.rotary import RotaryEmbedding, apply_rotary

ROWS = (1, 7, 300)


@pytest.fixture(scope="module")
def ops():
    built = cpu_fused.load_ops()
    if built is None:
        pytest.skip("fused CPU kernels not available (no compiler, or KAON_DISABLE_CPP_OPS)")
    return built


@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_and_residual_add(ops, rows):
    generator = torch.Generator().manual_seed(rows)
    x, residual = torch.randn(2, rows, 576, generator=generator)
    weight = torch.randn(576, generator=generator)
    expected = F.rms_norm(x, (576,), weight, 1e-5)
    assert (ops.rms_norm(x, weight, 1e-5) - expected).abs().max().item() <= 2e-6
    updated = residual.clone()
    out = ops.add_rms_norm_(x, updated, weight, 1e-5)
    assert torch.equal(updated, x + residual)
    expected = F.rms_norm(x + residual, (576,), weight, 1e-5)
    assert (out - expected).abs().max().item() <= 2e-6


@pytest.mark.parametrize("rows", ROWS)
def test_silu_and_mul(ops, rows):
    gate_up = torch.randn(rows, 2 * 1536, generator=torch.Generator().manual_seed(rows)) * 4
    expected = F.silu(gate_up[:, :1536]) * gate_up[:, 1536:]
    torch.testing.assert_close(ops.silu_and_mul(gate_up), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows", ROWS)
def test_rotary_and_cache_write(ops, rows):
    heads, kv_heads, head_dim, block_size = 9, 3, 64, 16
    generator = torch.Generator().manual_seed(rows)
    rotary = RotaryEmbedding(head_dim, 4096, 100000.0)
    positions = torch.randint(0, 4096, (rows,), generator=generator)
    slots = torch.randperm(64 * block_size, generator=generator)[:rows]
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=generator)

    ref_cache = [torch.zeros(64, block_size, kv_heads, head_dim) for _ in range(2)]
    query_key = qkv[:, : (heads + kv_heads) * head_dim].view(rows, -1, head_dim)
    rotated = apply_rotary(query_key, *rotary.lookup(positions))
    value = qkv[:, (heads + kv_heads) * head_dim :].view(rows, kv_heads, head_dim)
    write_kv_cache(rotated[:, heads:], value, *ref_cache, slots)

    fused_qkv, cache = qkv.clone(), [torch.zeros_like(c) for c in ref_cache]
    ops.rotary_and_cache_(
        fused_qkv, positions, rotary.cos, rotary.sin, *cache, slots, heads, kv_heads
    )
    fused_qk = fused_qkv[:, : (heads + kv_heads) * head_dim].view(rows, -1, head_dim)
    assert (fused_qk - rotated).abs().max().item() <= 1e-6
    assert (cache[0] - ref_cache[0]).abs().max().item() <= 1e-6
    assert torch.equal(cache[1], ref_cache[1])
    assert torch.equal(fused_qkv[:, (heads + kv_heads) * head_dim :], qkv[:, -kv_heads * 64 :])


def test_rotary_rejects_a_position_past_the_table(ops):
    rotary = RotaryEmbedding(64, 32, 10000.0)
    cache = torch.zeros(2, 16, 3, 64)
    with pytest.raises(RuntimeError, match="position out of the RoPE table"):
        ops.rotary_and_cache_(
            torch.zeros(1, 15 * 64), torch.tensor([32]), rotary.cos, rotary.sin,
            cache, cache.clone(), torch.tensor([0]), 9, 3,
        )  # fmt: skip


def test_model_logits_with_and_without_fused_kernels(ops, llm, monkeypatch):
    """Same prompt through the real engine, kernels on and off: logprobs within 1e-4."""
    from kaon.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=5, prompt_logprobs=5)
    prompt = "The paged KV cache keeps every request's keys and values in fixed-size blocks."
    fused = llm.generate([prompt], params, use_tqdm=False)[0]
    monkeypatch.setattr(cpu_fused, "_ops", None)
    plain = llm.generate([prompt], params, use_tqdm=False)[0]
    assert fused.outputs[0].token_ids == plain.outputs[0].token_ids
    pairs = [*zip(fused.prompt_logprobs[1:], plain.prompt_logprobs[1:], strict=True)]
    pairs += zip(fused.outputs[0].logprobs, plain.outputs[0].logprobs, strict=True)
    for ours, theirs in pairs:
        for token_id, logprob in ours.items():
            assert abs(logprob.logprob - theirs[token_id].logprob) <= 1e-4
