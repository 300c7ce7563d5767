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

from kaon.attention.torch_backend import write_kv_cache
from kaon.kernels import cpu_fused


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

    The cos/sin table covers ``max_position`` positions and is built once, in float32 (built
    under ``torch.device("meta")`` it is left unfilled: the loader rebuilds it for real);
    ``limit_positions`` shortens it to the engine's max_model_len.
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
        rope_type = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type"))
        if rope_type not in (None, "default", "llama3", "linear"):
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported (llama3, linear)")
        if torch.get_default_device().type == "meta":  # shapes only (torch's meta arange is slow)
            self.register_buffer("cos", torch.empty(max_position, head_dim // 2), persistent=False)
            self.register_buffer("sin", torch.empty(max_position, head_dim // 2), persistent=False)
            return
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, rope_scaling or {})
        elif rope_type == "linear":
            inv_freq = inv_freq / float(rope_scaling["factor"])  # type: ignore[index]
        if freq_divisors is not None:
            inv_freq = inv_freq / freq_divisors.to(torch.float64)
        # [max_position, head_dim / 2], filled 4096 positions at a time: the float64 angles of a
        # 32k-position table at head_dim 256 would be 32 MiB of temporaries.
        cos = torch.empty(max_position, head_dim // 2)
        sin = torch.empty(max_position, head_dim // 2)
        for start in range(0, max_position, 4096):
            positions = torch.arange(start, min(start + 4096, max_position), dtype=torch.float64)
            freqs = torch.outer(positions, inv_freq).float()
            torch.cos(freqs, out=cos[start : start + len(positions)])
            torch.sin(freqs, out=sin[start : start + len(positions)])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def limit_positions(self, max_positions: int) -> None:
        """Keep the tables' first ``max_positions`` rows only (a copy: the rest is freed); a
        position past them then raises (IndexError, or the fused kernel's RuntimeError)."""
        if max_positions < self.cos.shape[0]:
            self.cos = self.cos[:max_positions].clone()
            self.sin = self.sin[:max_positions].clone()

    def step_inputs(self, positions: torch.Tensor) -> RopeInputs:
        """What every layer of this step needs to rotate its queries and keys."""
        return RopeInputs(self, positions)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step tables for ``apply``: cos and signed sin, each [num_tokens, 1, head_dim].

        Computed once per step and shared by every layer.
        """
        cos = self.cos[positions]  # [num_tokens, head_dim / 2]
        sin = self.sin[positions]
        return torch.cat((cos, cos), -1).unsqueeze(1), torch.cat((-sin, sin), -1).unsqueeze(1)


def limit_rope_positions(model: nn.Module, max_positions: int) -> None:
    """Shorten every RoPE table of ``model`` to ``max_positions`` rows (the engine's maximum
    context, tokens): a 32k-position model's tables are 16 MiB each at head_dim 256."""
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.limit_positions(max_positions)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [num_tokens, num_heads, head_dim] in place of a copy: returns a new tensor.

    ``x * cos + rotate_half(x) * sin`` where ``rotate_half(x) = (-x2, x1)``; rolling x by half a
    head gives ``(x2, x1)`` and the sign lives in ``signed_sin = (-sin, sin)``.
    """
    if x.dtype != torch.float32:
        return apply_rotary(x.float(), cos, signed_sin).to(x.dtype)
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


class RopeInputs:
    """One step's RoPE inputs, shared by all layers: positions [num_tokens] int64, the full
    cos/sin tables [max_position, head_dim / 2], and (built on first use, for the torch path) the
    per-token ``lookup`` tables."""

    def __init__(self, rotary: RotaryEmbedding, positions: torch.Tensor) -> None:
        self.positions = positions
        self.cos_table, self.sin_table = rotary.cos, rotary.sin
        self._rotary = rotary
        self._step_tables: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def step_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, each [num_tokens, 1, head_dim] (see ``RotaryEmbedding.lookup``)."""
        if self._step_tables is None:
            self._step_tables = self._rotary.lookup(self.positions)
        return self._step_tables


def rotate_and_cache(
    qkv: torch.Tensor,
    rope: RopeInputs,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply RoPE to the q and k parts of ``qkv`` and store k and v at their KV cache slots.

    Args:
        qkv: [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim], this step's projections.
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        slot_mapping: [num_tokens] int64, ``block_id * block_size + offset`` per token.
    Returns:
        query [num_tokens, num_heads, head_dim], key and value [num_tokens, num_kv_heads,
        head_dim] (rotated query and key; views of ``qkv`` on the fused path).
    """
    num_tokens = qkv.shape[0]
    head_dim = key_cache.shape[-1]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    ops = cpu_fused.ops_for(qkv)
    fused = ops is not None and key_cache.dtype == torch.float32 and qkv.is_contiguous()
    if fused:
        ops.rotary_and_cache_(
            qkv, rope.positions, rope.cos_table, rope.sin_table,
            key_cache, value_cache, slot_mapping, num_heads, num_kv_heads,
        )  # fmt: skip
        query = qkv[:, :q_size].view(num_tokens, num_heads, head_dim)
        key = qkv[:, q_size : q_size + kv_size].view(num_tokens, num_kv_heads, head_dim)
    else:
        # Rotate queries and keys together: [T, num_heads + num_kv_heads, head_dim].
        query_key = qkv[:, : q_size + kv_size].view(num_tokens, -1, head_dim)
        query_key = apply_rotary(query_key, *rope.step_tables)
        query, key = query_key.split([num_heads, num_kv_heads], dim=1)
    value = qkv[:, q_size + kv_size :].view(num_tokens, num_kv_heads, head_dim)
    if not fused:
        write_kv_cache(key, value, key_cache, value_cache, slot_mapping)
    return query, key, value
