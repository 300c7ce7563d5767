"""GGUF block weights run by the C++ kernels (``kaon/kernels/gguf_matmul``), per type.

Random blocks with valid fp16 scales; the reference is ``gguf.quants.dequantize`` + a float32
matmul. Error measure: rel = ||y - y_ref||_F / ||y_ref||_F over a [64, N] output.

- against the reference on the same 8-bit activations (x rounded per 32 / 256 block as the kernel
  does): rel <= 1e-5 (the kernels' integer sums are exact; only float summation order differs);
- against the float32 product of the unrounded activations: rel <= 1e-2 (measured 5e-3 to 8e-3
  for Gaussian activations: the 8-bit activation rounding, as llama.cpp's Q8_0 / Q8_K);
- batch invariance: each row of a 64-row product is bit-identical to that row alone (AVX2 and
  scalar paths; the AVX2 path tiles one row as 1 x 4 weight rows and many rows as 4 x 1), and
  the AVX2 and scalar paths agree to rel 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaon.kernels.gguf_matmul import KERNEL_TYPES, load_kernels
from kaon.layers.quantization import gguf_blocks
from kaon.layers.quantization.gguf_blocks import GGUFBlocks, GGUFBlockWeight

K_BY_BLOCK = {32: 320, 256: 512}


@pytest.fixture(scope="module")
def kernels():
    module = load_kernels()
    if module is None:
        pytest.skip("C++ GGUF kernels unavailable (no compiler or KAON_DISABLE_CPP_OPS)")
    return module


def random_blocks(type_name: str, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """uint8 [rows, k / block * bytes]: random codes, fp16 scales in a realistic range."""
    rng = np.random.default_rng(seed)
    _, block, nbytes = KERNEL_TYPES[type_name]
    raw = rng.integers(0, 256, size=(rows, k // block, nbytes), dtype=np.uint8)

    def f16(lo: float, hi: float) -> np.ndarray:
        values = rng.uniform(lo, hi, size=(rows, k // block, 1)).astype(np.float16)
        return values.view(np.uint8)

    if type_name == "Q6_K":
        raw[..., 208:210] = f16(1e-4, 1e-3)
    elif type_name in ("Q4_K", "Q5_K"):
        raw[..., 0:2], raw[..., 2:4] = f16(1e-4, 1e-3), f16(1e-4, 1e-3)
    else:
        raw[..., 0:2] = f16(1e-3, 1e-2)
        if type_name in ("Q4_1", "Q5_1"):
            raw[..., 2:4] = f16(-0.05, 0.05)
    return raw.reshape(rows, -1)


def round_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """x [M, K] rounded as the kernels round it: d = max|x| / 127 per block, q = rne(x / d)."""
    groups = x.reshape(x.shape[0], -1, block)
    d = groups.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    return (torch.round(groups * inverse) * d).reshape(x.shape)


def relative(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y.double() - reference.double()).norm() / reference.double().norm()).item()


@pytest.mark.parametrize("type_name", list(KERNEL_TYPES))
def test_kernel_matches_dequantized_matmul(kernels, type_name: str) -> None:
    type_id, block, _ = KERNEL_TYPES[type_name]
    k = K_BY_BLOCK[block]
    # 99 rows: the one-row GEMV's 4-row tiles plus a remainder of 3 single rows.
    data = random_blocks(type_name, 99, k)
    weight = GGUFBlocks(type_name, data, k).dequantize()  # [99, K] float32
    blocks = torch.from_numpy(data)
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(1))
    y = kernels.gguf_mm(x, blocks, type_id, True)
    assert relative(y, round_activations(x, block) @ weight.t()) <= 1e-5
    assert relative(y, x @ weight.t()) <= 1e-2
    scalar = kernels.gguf_mm(x, blocks, type_id, False)
    assert relative(scalar, y) <= 1e-6
    for path, full in ((True, y), (False, scalar)):  # batch invariance, bit for bit
        rows = torch.cat([kernels.gguf_mm(x[i : i + 1], blocks, type_id, path) for i in range(64)])
        assert torch.equal(rows, full)
        assert torch.equal(kernels.gguf_mm(x[:5], blocks, type_id, path), full[:5])
    ids = torch.tensor([0, 98, 7, 7])
    rows = kernels.gguf_dequantize_rows(blocks, type_id, k, ids)
    assert torch.equal(rows, weight[ids])


def test_mixed_type_fused_weight_equals_separate_products(kernels) -> None:
    """Gemma 3's qkv: q, k Q5_0 and v Q8_0 -> two segments writing column slices of one output."""
    k = 320
    parts = [GGUFBlocks(t, random_blocks(t, n, k, seed=n), k)
             for t, n in (("Q5_0", 64), ("Q5_0", 32), ("Q8_0", 32))]  # fmt: skip
    fused = GGUFBlockWeight(parts)
    assert [(name, rows) for name, _, _, rows in fused.segments] == [("Q5_0", 96), ("Q8_0", 32)]
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2))
    separate = torch.cat([GGUFBlockWeight([p]).linear(x) for p in parts], dim=1)
    assert torch.equal(fused.linear(x), separate)
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
    ids = torch.tensor([0, 100, 127])
    assert torch.equal(fused.embedding(ids), fused.dequantize()[ids])
    bias = torch.randn(128)
    assert torch.allclose(fused.linear(x, bias), separate + bias)


def test_block_weight_rejects_bad_parts() -> None:
    with pytest.raises(ValueError, match="no kernel"):
        GGUFBlockWeight([GGUFBlocks("Q2_K", np.zeros((2, 84), np.uint8), 256)])
    with pytest.raises(ValueError, match="do not hold"):
        GGUFBlockWeight([GGUFBlocks("Q4_1", np.zeros((2, 19), np.uint8), 32)])


def test_default_model_runs_on_its_blocks(default_gguf_path: str) -> None:
    """``quantization="auto"`` (the default) keeps the file's Q4_1 layers and Q8_0 embedding /
    tied LM head as blocks; a fixed prompt's greedy continuation is asserted."""
    from kaon import LLM, SamplingParams

    llm = LLM(kv_cache_memory_bytes=50_000_000, max_model_len=512)
    try:
        model = llm.engine.executor.model_runner.model
        assert isinstance(model.embed_tokens, GGUFBlockWeight)
        assert model.embed_tokens.segments[0][0] == "Q8_0"
        assert model.layers[0].mlp.gate_up_proj.segments[0][0] == "Q4_1"
        params = SamplingParams(temperature=0.0, max_tokens=12)
        out = llm.generate(["The capital of France is"], params, use_tqdm=False)[0].outputs[0]
        assert out.token_ids[:6] == [7042, 30, 198, 198, 504, 1797]  # " Paris.\n\nThe United"
        assert out.text.startswith(" Paris.\n\nThe United States")
        assert gguf_blocks.USE_SIMD
    finally:
        llm.close()


def test_auto_keeps_kernel_types_and_falls_back_to_dequantizing(
    default_gguf_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from kaon.kernels import gguf_matmul
    from kaon.models.loader import loader
    from kaon.models.loader.gguf import open_gguf

    reader = open_gguf(default_gguf_path)
    cpu = torch.device("cpu")
    caplog.set_level(logging.INFO, logger="kaon.models.loader.loader")
    if gguf_matmul.load_kernels() is not None:
        assert loader._native_block_types(reader, cpu, None) == ("Q4_1", "Q8_0")
        assert "running Q4_1, Q8_0 blocks natively" in caplog.text
    assert loader._native_block_types(reader, torch.device("cuda"), None) == ()
    assert "no GGUF block kernels on cuda; dequantizing Q4_1, Q8_0" in caplog.text
    monkeypatch.setattr(gguf_matmul, "load_kernels", lambda: None)  # failed build / disabled
    assert loader._native_block_types(reader, cpu, None) == ()
    assert "C++ GGUF kernels are unavailable" in caplog.text
