"""Gemma 3 text decoder (Gemma Team, "Gemma 3 Technical Report", 2025) over a paged KV cache.

    input_ids [T] -> embed_tokens * sqrt(hidden_size)
                  -> N x ( RMSNorm -> attention -> RMSNorm -> +res
                           -> RMSNorm -> GeGLU -> RMSNorm -> +res )
                  -> norm -> hidden [T, hidden_size]
    compute_logits: hidden @ embed_tokens^T, then cap * tanh(logits / cap) when the model has
    ``final_logit_softcapping``.

Differences from Llama (``kaon.models.llama``), all from the report and transformers'
modeling_gemma3.py:

* attention layers alternate: five sliding-window (local) layers, then one global layer
  (``config.layer_types``); local layers see the last ``sliding_window`` tokens
  (``kaon.attention.sliding_window``) and rotate with their own RoPE base
  (``rope_local_theta``, 10,000) while global ones use ``rope_theta`` (1,000,000) and any
  ``rope_scaling``;
* queries and keys are RMS-normalised per head (QK-norm) before RoPE; the attention scale is
  ``query_pre_attn_scalar ** -0.5``;
* the MLP is GeGLU with the tanh approximation of GELU;
* every RMSNorm multiplies by ``1 + w``. The ``weight`` parameters here hold that multiplier: GGUF
  files already store ``1 + w`` (llama.cpp's converter adds the 1); the Hugging Face loader adds it.

Parameter names follow Llama's (fused ``qkv_proj`` and ``gate_up_proj``), so the loaders and
weight-only quantization treat both alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kaon.attention.metadata import get_attention_metadata
from kaon.attention.sliding_window import (
    SlidingWindowMetadata,
    build_sliding_window_metadata,
    sliding_window_attention,
)
from kaon.attention.torch_backend import paged_attention
from kaon.distributed.parallel_state import get_tp_group
from kaon.layers.linear import linear, transpose_for_inference
from kaon.layers.norm import RMSNorm
from kaon.layers.rotary import RopeInputs, RotaryEmbedding, rotate_and_cache
from kaon.layers.vocab_parallel import embed, lm_head_logits, pack_lm_head
from kaon.models.architecture import ArchitectureConfig

# Per-layer norms, in the order a layer applies them (the loaders fill each one).
GEMMA3_LAYER_NORMS = (
    "input_layernorm",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)


def _weight(out_features: int, in_features: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)


class Gemma3Attention(nn.Module):
    """Grouped-query attention with QK-norm; local (sliding-window) or global by layer."""

    def __init__(self, config: ArchitectureConfig, layer_index: int) -> None:
        super().__init__()
        assert config.layer_types is not None and config.query_pre_attn_scalar is not None
        self.is_sliding = config.layer_types[layer_index] == "sliding_attention"
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.qkv_proj = _weight(self.q_size + 2 * self.kv_size, config.hidden_size)
        self.qkv_bias = None
        self.o_proj = _weight(config.hidden_size, self.q_size)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        # Set by ModelRunner.initialize_kv_cache: [num_blocks, block_size, kv_heads, head_dim] each.
        self.key_cache: torch.Tensor | None = None
        self.value_cache: torch.Tensor | None = None

    def forward(
        self, rope: RopeInputs, hidden: torch.Tensor, local: SlidingWindowMetadata | None
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = linear(hidden, self.qkv_proj)  # [T, q_size + 2 * kv_size]
        query, key, value = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # QK-norm over each head's features: rows of [T * heads, head_dim].
        query = self.q_norm.forward(query.reshape(-1, self.head_dim).contiguous())
        key = self.k_norm.forward(key.reshape(-1, self.head_dim).contiguous())
        qkv = torch.cat(
            (query.view(num_tokens, -1), key.view(num_tokens, -1), value), dim=-1
        )  # [T, q_size + 2 * kv_size]
        metadata = get_attention_metadata()
        assert self.key_cache is not None and self.value_cache is not None, "no KV cache"
        query, key, value = rotate_and_cache(
            qkv, rope, self.key_cache, self.value_cache, metadata.slot_mapping,
            self.num_heads, self.num_kv_heads,
        )  # fmt: skip
        caches = (self.key_cache, self.value_cache)
        if self.is_sliding:
            attn = sliding_window_attention(
                query, key, value, *caches, metadata, local, self.scale
            )  # [T, q_size]
        else:
            attn = paged_attention(query, key, value, *caches, metadata, self.scale)
        return linear(attn, self.o_proj)


class Gemma3MLP(nn.Module):
    """GeGLU feed-forward (Shazeer 2020): down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = _weight(2 * config.intermediate_size, config.hidden_size)
        self.down_proj = _weight(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate_up = linear(hidden, self.gate_up_proj)  # [T, 2 * intermediate]
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return linear(F.gelu(gate, approximate="tanh") * up, self.down_proj)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: ArchitectureConfig, layer_index: int) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(size, eps)
        self.self_attn = Gemma3Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(size, eps)
        self.pre_feedforward_layernorm = RMSNorm(size, eps)
        self.mlp = Gemma3MLP(config)
        self.post_feedforward_layernorm = RMSNorm(size, eps)

    def forward(
        self,
        rope: RopeInputs,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        local: SlidingWindowMetadata | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (the MLP branch's normed output, the residual stream before adding it)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm.forward(hidden)
        else:
            hidden, residual = self.input_layernorm.forward(hidden, residual)
        hidden = self.self_attn.forward(rope, hidden, local)
        hidden = self.post_attention_layernorm.forward(hidden)
        hidden, residual = self.pre_feedforward_layernorm.forward(hidden, residual)
        hidden = self.mlp.forward(hidden)
        return self.post_feedforward_layernorm.forward(hidden), residual


class Gemma3ForCausalLM(nn.Module):
    """The whole decoder plus (tied) LM head; ``forward`` returns final hidden states.

    One rank only: ``tensor_parallel_size`` > 1 is refused by the loader.
    """

    layer_norms = GEMMA3_LAYER_NORMS

    def __init__(self, config: ArchitectureConfig, freq_divisors: torch.Tensor | None = None):
        super().__init__()
        assert config.sliding_window is not None
        self.config = config
        self.build_rotary(freq_divisors)
        self.tp_group = get_tp_group()
        self.vocab_start = 0
        self.embed_tokens = nn.Parameter(
            torch.empty(config.vocab_size, config.hidden_size), requires_grad=False
        )
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Parameter(
                torch.empty(config.vocab_size, config.hidden_size), requires_grad=False
            )
        )
        self._packed_lm_head: tuple[object, torch.Tensor | None] | None = None

    def build_rotary(self, freq_divisors: torch.Tensor | None = None) -> None:
        """(Re)build the global and local RoPE tables (the loader calls it after ``to_empty``)."""
        config = self.config
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.max_position_embeddings,
            config.rope_theta,
            config.rope_scaling,
            freq_divisors,
        )
        self.local_rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_local_theta or 10_000.0
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: [num_tokens] int64 -> hidden [num_tokens, hidden_size]."""
        hidden = embed(input_ids, self.embed_tokens, self.vocab_start, self.tp_group)
        # transformers scales in the activations' dtype (sqrt(640) rounded to float32 here).
        hidden = hidden * torch.tensor(self.config.hidden_size**0.5, dtype=hidden.dtype)
        rope_global = self.rotary.step_inputs(positions)
        rope_local = self.local_rotary.step_inputs(positions)
        block_size = self.layers[0].self_attn.key_cache.shape[1]
        local = build_sliding_window_metadata(
            get_attention_metadata(), self.config.sliding_window, block_size
        )
        residual = None
        for layer in self.layers:
            rope = rope_local if layer.self_attn.is_sliding else rope_global
            hidden, residual = layer.forward(rope, hidden, residual, local)
        hidden, _ = self.norm.forward(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden [rows, hidden_size] -> logits [rows, vocab_size] in float32, soft-capped."""
        lm_head = self.embed_tokens if self.lm_head is None else self.lm_head
        if self._packed_lm_head is None or self._packed_lm_head[0] is not lm_head:
            self._packed_lm_head = (lm_head, pack_lm_head(lm_head))
        packed = self._packed_lm_head[1]
        logits = lm_head_logits(hidden, lm_head, self.config.vocab_size, self.tp_group, packed)
        cap = self.config.final_logit_softcapping
        if logits is not None and cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def prepare_for_inference(self) -> None:
        """Called once after the weights are loaded: store linear weights as [in, out]."""
        for layer in self.layers:
            transpose_for_inference(layer.self_attn, ("qkv_proj", "o_proj"))
            transpose_for_inference(layer.mlp, ("gate_up_proj", "down_proj"))

    def kv_caches(self) -> list[Gemma3Attention]:
        return [layer.self_attn for layer in self.layers]
