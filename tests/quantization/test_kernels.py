"""Fast quantized kernels against their dequantize-then-matmul reference twins (random inputs).

Tolerance: the fast CPU kernels compute in bfloat16 (8-bit mantissa, unit roundoff 2^-9 ~ 0.2%),
so fast vs reference relative Frobenius error must stay below 1e-2; with float32 everything the
reference and a float32 kernel call agree to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from kaon.layers.quantization import Int4Weight, Int8Weight, validate
from kaon.layers.quantization.int4 import effective_group_size

BF16_TOLERANCE = 1e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("batch", [1, 7, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_fast_matches_reference(batch: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(batch)
    weight = torch.randn(96, 64, generator=generator)
    quantized = Int8Weight.quantize(weight)
    x = torch.randn(batch, 64, generator=generator).to(dtype)
    bias = torch.randn(96, generator=generator).to(dtype)
    fast, reference = quantized.linear(x, bias), quantized.reference_linear(x, bias)
    assert fast.dtype == dtype and fast.shape == (batch, 96)
    assert _rel(fast, reference) < BF16_TOLERANCE
    # Quantization itself: per-channel absmax int8 keeps each weight within half a step.
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((quantized.dequantize() - weight).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("batch", [1, 5, 32])
def test_int4_fast_matches_reference(group_size: int, batch: int) -> None:
    generator = torch.Generator().manual_seed(group_size + batch)
    weight = torch.randn(48, 256, generator=generator)
    quantized = Int4Weight.quantize(weight, group_size)
    assert quantized.packed is not None  # N = 48 is a multiple of 16: the CPU kernel applies
    x = torch.randn(batch, 256, generator=generator)
    fast, reference = quantized.linear(x), quantized.reference_linear(x)
    assert fast.dtype == torch.float32
    assert _rel(fast, reference) < BF16_TOLERANCE
    # Min-max rounding: every weight within half a step of its group's grid.
    minmax = Int4Weight.quantize(weight, group_size, method="minmax")
    groups = weight.reshape(48, -1, group_size)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    error = (minmax.dequantize().reshape(48, -1, group_size) - groups).abs()
    assert (error <= step[..., None] / 2 + 1e-5).all()


def test_int4_float32_kernel_convention() -> None:
    """The CPU tinygemm kernel computes (q - 8) * scale + zero: with float32 scale/zero it
    agrees with the float32 reference to 1e-5, which pins the zero = min + 8 * scale mapping."""
    generator = torch.Generator().manual_seed(0)
    quantized = Int4Weight.quantize(torch.randn(32, 128, generator=generator), 32)
    zeros = quantized.mins + 8 * quantized.scales
    sz = torch.stack([quantized.scales.t(), zeros.t()], dim=-1).contiguous()
    x = torch.randn(3, 128, generator=generator)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, quantized.packed, 32, sz)
    assert _rel(out, quantized.reference_linear(x)) < 1e-5


def test_int4_without_kernel_uses_reference() -> None:
    """N = 24 is not a multiple of 16: no CPU packing, the weight stays unpacked."""
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(1))
    quantized = Int4Weight.quantize(weight, 32)
    assert quantized.packed is None and quantized.qweight is not None
    x = torch.randn(2, 64)
    torch.testing.assert_close(quantized.linear(x), quantized.reference_linear(x))


def test_unpacked_qweight_round_trips() -> None:
    weight = torch.randn(64, 96, generator=torch.Generator().manual_seed(2))
    quantized = Int4Weight.quantize(weight, 32)
    unpacked = Int4Weight(quantized.unpacked_qweight(), quantized.scales, quantized.mins, 32)
    assert torch.equal(unpacked.unpacked_qweight(), quantized.unpacked_qweight())
    assert int(quantized.unpacked_qweight().max()) <= 15


def test_group_size_falls_back_to_a_divisor() -> None:
    assert effective_group_size(128, 576) == 64
    assert effective_group_size(128, 1536) == 128
    assert effective_group_size(32, 576) == 32
    with pytest.raises(ValueError, match="in_features"):
        effective_group_size(128, 100)


def test_validate_names_the_field() -> None:
    with pytest.raises(ValueError, match="quantization must be"):
        validate("int3", 128)
    with pytest.raises(ValueError, match="quantization_group_size"):
        validate("int4", 48)
