"""kaon's AVX2 float32 GEMM (``kaon.kernels.cpu_gemm``) against ``torch.mm``, its reference.

Values must match within 1e-4 (float32 sums of up to 1536 products of ~N(0, 1) x ~N(0, 0.05)
terms; only the summation order differs). Each row must be bit-identical whatever the number of
rows computed with it (1..64: every register tile and block shape), the batch invariance that
keeps greedy outputs the same alone and batched. A whole-engine check: the shared engine packed
its linear weights, and packing round-trips bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from kaon.kernels import cpu_gemm
from kaon.layers.packed_linear import PackedLinearWeight, pack_linear_weights


@pytest.fixture(scope="module")
def ops():
    built = cpu_gemm.load_ops()
    if built is None:
        pytest.skip("AVX2 GEMM not available (no AVX2, no compiler, or KAON_DISABLE_CPP_OPS)")
    return built


def _weight(in_features: int, out_features: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(in_features, out_features, generator=generator) * 0.05  # [in, out]


@pytest.mark.parametrize(("in_features", "out_features"), [(576, 192), (1536, 576), (64, 1000)])
@pytest.mark.parametrize("rows", [1, 5, 37])
def test_matches_torch_mm(ops, in_features, out_features, rows):
    weight_t = _weight(in_features, out_features, rows)
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(out_features, generator=torch.Generator().manual_seed(2))
    packed = PackedLinearWeight(weight_t, ops)
    assert (packed.linear(x) - x @ weight_t).abs().max().item() <= 1e-4
    assert (packed.linear(x, bias) - torch.addmm(bias, x, weight_t)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("out_features", [576, 200])
def test_rows_do_not_depend_on_the_batch(ops, out_features):
    weight_t = _weight(576, out_features, 3)
    packed = PackedLinearWeight(weight_t, ops)
    x = torch.randn(64, 576, generator=torch.Generator().manual_seed(4))
    full = packed.linear(x)
    for rows in range(1, 14):  # every register tile (1..6 rows) and mix of tiles
        assert torch.equal(packed.linear(x[:rows]), full[:rows]), f"{rows} rows"
    assert torch.equal(packed.linear(x[29:30]), full[29:30])  # a row that sat in a 6-row tile
    assert torch.equal(packed.linear(x[:32]), full[:32])


def test_pack_round_trips_and_keeps_the_logical_shape(ops):
    weight_t = _weight(96, 50, 5)  # 50 columns: the last panel is padded
    packed = PackedLinearWeight(weight_t, ops)
    assert packed.shape == (96, 50)
    assert packed.packed.shape == (4, 96, 16)
    assert torch.equal(packed.unpack(), weight_t)


def test_packing_skips_quantized_and_non_float32_weights(ops):
    layer = torch.nn.Module()
    layer.self_attn = torch.nn.Module()
    layer.mlp = torch.nn.Module()
    layer.self_attn.qkv_proj = torch.nn.Parameter(_weight(32, 48, 6), requires_grad=False)
    layer.self_attn.o_proj = torch.nn.Parameter(_weight(16, 32, 7).bfloat16(), requires_grad=False)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([layer])
    assert pack_linear_weights(model, None) == 0
    assert pack_linear_weights(model, ops) == 1
    assert isinstance(layer.self_attn.qkv_proj, PackedLinearWeight)
    assert layer.self_attn.o_proj.dtype == torch.bfloat16


def test_shared_engine_runs_on_packed_weights(ops, llm):
    from kaon import SamplingParams

    llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    model = llm.engine.executor.model_runner.model
    mlp = model.layers[0].mlp
    assert isinstance(mlp.gate_up_proj, PackedLinearWeight)
    assert mlp.gate_up_proj.shape == (576, 2 * 1536)
    assert isinstance(model._packed_lm_head[1], PackedLinearWeight)
