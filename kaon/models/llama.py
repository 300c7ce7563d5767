"""Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2) over a paged KV cache.

    input_ids [T] -> embed_tokens
                  -> N x (RMSNorm -> attention -> +res -> RMSNorm -> SwiGLU -> +res)
                  -> norm -> hidden [T, hidden_size];  compute_logits(hidden[rows]) -> [rows, vocab]

T is the flattened token count of every request scheduled this step (decodes and prefill chunks
mixed). Parameter names follow Hugging Face's, except that q/k/v and gate/up projections are stored
fused (``qkv_proj``, ``gate_up_proj``) so each is one GEMM; the loaders concatenate them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kaon.attention.metadata import get_attention_metadata
from kaon.attention.torch_backend import paged_attention
from kaon.distributed.parallel_state import get_tp_group
from kaon.distributed.partition import vocab_shard_size
from kaon.kernels import cpu_fused
from kaon.layers.linear import linear, transpose_for_inference
from kaon.layers.norm import RMSNorm
from kaon.layers.rotary import RopeInputs, RotaryEmbedding, rotate_and_cache
from kaon.layers.vocab_parallel import embed, lm_head_logits, pack_lm_head
from kaon.models.architecture import ArchitectureConfig


def _weight(out_features: int, in_features: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)


class LlamaAttention(nn.Module):
    """Under tensor parallelism ``config`` holds this rank's heads; o_proj is row-parallel."""

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.tp_group = get_tp_group()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = _weight(self.q_size + 2 * self.kv_size, config.hidden_size)
        self.qkv_bias = (
            nn.Parameter(torch.zeros(self.q_size + 2 * self.kv_size), requires_grad=False)
            if config.attention_bias
            else None
        )
        self.o_proj = _weight(config.hidden_size, self.q_size)
        # Set by ModelRunner.initialize_kv_cache: [num_blocks, block_size, kv_heads, head_dim] each.
        self.key_cache: torch.Tensor | None = None
        self.value_cache: torch.Tensor | None = None

    def forward(self, rope: RopeInputs, hidden: torch.Tensor) -> torch.Tensor:
        qkv = linear(hidden, self.qkv_proj, self.qkv_bias)  # [T, q_size + 2 * kv_size]
        metadata = get_attention_metadata()
        assert self.key_cache is not None and self.value_cache is not None, "no KV cache"
        query, key, value = rotate_and_cache(
            qkv, rope, self.key_cache, self.value_cache, metadata.slot_mapping,
            self.num_heads, self.num_kv_heads,
        )  # fmt: skip
        attn = paged_attention(
            query, key, value, self.key_cache, self.value_cache, metadata, self.scale
        )  # [T, q_size]
        out = linear(attn, self.o_proj)
        return out if self.tp_group is None else self.tp_group.all_reduce(out)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.tp_group = get_tp_group()  # gate/up column-parallel, down row-parallel
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = _weight(2 * config.intermediate_size, config.hidden_size)
        self.down_proj = _weight(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate_up = linear(hidden, self.gate_up_proj)  # [T, 2 * intermediate]
        ops = cpu_fused.ops_for(gate_up)
        if ops is not None and gate_up.is_contiguous():
            activated = ops.silu_and_mul(gate_up)  # [T, intermediate]
        else:
            gate, up = gate_up.split(self.intermediate_size, dim=-1)
            activated = F.silu(gate) * up
        out = linear(activated, self.down_proj)
        return out if self.tp_group is None else self.tp_group.all_reduce(out)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self,
        rope: RopeInputs,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # ``.forward`` rather than ``__call__``: five calls per layer, 150 per decode step, and
        # nothing registers module hooks on the decoder (see LlamaForCausalLM.forward).
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm.forward(hidden)
        else:
            hidden, residual = self.input_layernorm.forward(hidden, residual)
        hidden = self.self_attn.forward(rope, hidden)
        hidden, residual = self.post_attention_layernorm.forward(hidden, residual)
        return self.mlp.forward(hidden), residual


class LlamaForCausalLM(nn.Module):
    """The whole decoder plus LM head; ``forward`` returns final hidden states, not logits."""

    def __init__(self, config: ArchitectureConfig, freq_divisors: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        self.build_rotary(freq_divisors)
        # Vocabulary-parallel: this rank's rows [vocab_start, vocab_start + rows) (all at TP=1).
        self.tp_group = get_tp_group()
        group = self.tp_group
        vocab_rows = vocab_shard_size(config.vocab_size, 1 if group is None else group.world_size)
        self.vocab_start = 0 if group is None else group.rank * vocab_rows
        self.embed_tokens = nn.Parameter(
            torch.empty(vocab_rows, config.hidden_size), requires_grad=False
        )
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Tied models (SmolLM2) reuse embed_tokens as the LM head.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Parameter(torch.empty(vocab_rows, config.hidden_size), requires_grad=False)
        )
        # (LM head it was made from, its oneDNN-packed copy or None), built on first use: loaders
        # and quantization may replace the head after construction.
        self._packed_lm_head: tuple[object, torch.Tensor | None] | None = None

    def build_rotary(self, freq_divisors: torch.Tensor | None = None) -> None:
        """(Re)build the RoPE tables (the loader calls it after ``to_empty``)."""
        config = self.config
        self.rotary = RotaryEmbedding(
            config.head_dim,
            config.max_position_embeddings,
            config.rope_theta,
            config.rope_scaling,
            freq_divisors,
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: [num_tokens] int64 -> hidden [num_tokens, hidden_size].

        Submodules are run through ``.forward`` directly, not ``nn.Module.__call__``: module
        hooks on the layers are not run (kaon registers none); at batch 1 the saved dispatch is
        part of a dispatch-bound decode step.
        """
        hidden = embed(input_ids, self.embed_tokens, self.vocab_start, self.tp_group)
        rope = self.rotary.step_inputs(positions)  # shared by all layers
        residual = None
        for layer in self.layers:
            hidden, residual = layer.forward(rope, hidden, residual)
        hidden, _ = self.norm.forward(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden [rows, hidden_size] -> logits [rows, vocab_size] in float32; ``None`` on
        tensor-parallel ranks other than 0 (they do not sample)."""
        lm_head = self.embed_tokens if self.lm_head is None else self.lm_head
        if self._packed_lm_head is None or self._packed_lm_head[0] is not lm_head:
            self._packed_lm_head = (lm_head, pack_lm_head(lm_head))
        packed = self._packed_lm_head[1]
        return lm_head_logits(hidden, lm_head, self.config.vocab_size, self.tp_group, packed)

    def prepare_for_inference(self) -> None:
        """Called once after the weights are loaded: store linear weights as [in, out]."""
        for layer in self.layers:
            transpose_for_inference(layer.self_attn, ("qkv_proj", "o_proj"))
            transpose_for_inference(layer.mlp, ("gate_up_proj", "down_proj"))

    def kv_caches(self) -> list[LlamaAttention]:
        return [layer.self_attn for layer in self.layers]
