"""Rotary position embedding (RoFormer, Su et al. 2021) in the Hugging Face "rotate half" layout.

Each head's ``head_dim`` features are split in two halves ``(x1, x2)`` rotated together:
``(x1 cos - x2 sin, x2 cos + x1 sin)``, with frequencies ``theta ** (-2i / rotary_dim)``.
Llama 3's scaling (``rope_type == "llama3"``) stretches the low frequencies by ``factor`` and blends
the middle band (Meta's Llama 3.1 reference code); GGUF files may instead carry ``rope_freqs``,
per-frequency divisors that llama.cpp applies the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    factor = float(scaling.get("factor", 8.0))
    low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
    high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    original_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = original_len / low_freq_factor
    high_freq_wavelen = original_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to query and key tensors by absolute position.

    The cos/sin table covers ``max_position`` positions and is built once, in float32.
    """

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        rope_scaling: dict | None = None,
        freq_divisors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        rope_type = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type"))
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope_scaling or {})
        elif rope_type == "linear":
            inv_freq = inv_freq / float(rope_scaling["factor"])  # type: ignore[index]
        elif rope_type not in (None, "default"):
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported (llama3, linear)")
        if freq_divisors is not None:
            inv_freq = inv_freq / freq_divisors.to(torch.float64)
        positions = torch.arange(max_position, dtype=torch.float64)
        freqs = torch.outer(positions, inv_freq).float()  # [max_position, head_dim / 2]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step tables for ``apply``: cos and signed sin, each [num_tokens, 1, head_dim].

        Computed once per step and shared by every layer.
        """
        cos = self.cos[positions]  # [num_tokens, head_dim / 2]
        sin = self.sin[positions]
        return torch.cat((cos, cos), -1).unsqueeze(1), torch.cat((-sin, sin), -1).unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [num_tokens, num_heads, head_dim] in place of a copy: returns a new tensor.

    ``x * cos + rotate_half(x) * sin`` where ``rotate_half(x) = (-x2, x1)``; rolling x by half a
    head gives ``(x2, x1)`` and the sign lives in ``signed_sin = (-sin, sin)``.
    """
    if x.dtype != torch.float32:
        return apply_rotary(x.float(), cos, signed_sin).to(x.dtype)
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)
