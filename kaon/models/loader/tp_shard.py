"""Slice checkpoint tensors (Hugging Face names, full ``[out, in]`` float tensors) to one
tensor-parallel rank's shard before the model is built, and the per-rank ArchitectureConfig.

Which rows/columns a rank keeps follows ``kaon.distributed.partition`` (KV-head groups for
attention, contiguous MLP columns, padded vocabulary rows):

    q_proj  rows  [q_heads * head_dim]          k_proj, v_proj  rows [kv_heads * head_dim]
    o_proj  cols  [q_heads * head_dim]          (row-parallel: the model all-reduces its output)
    gate_proj, up_proj rows [intermediate]      down_proj cols [intermediate] (row-parallel)
    embed_tokens, lm_head rows [vocab], zero-padded to the shard size
    norms, rope_freqs: replicated

Each kept slice is cloned, so the full tensor is freed as soon as the next one is read: a rank
holds its shard plus at most one full tensor while loading.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import torch

from kaon.distributed.partition import RankShard, plan_shard
from kaon.models.architecture import ArchitectureConfig


def plan_for(config: ArchitectureConfig, rank: int, tp_size: int) -> RankShard:
    """The shard of ``rank`` for this model.

    Raises:
        ValueError: naming ``tensor_parallel_size`` when the model cannot be split in
            ``tp_size`` ranks.
    """
    return plan_shard(
        rank,
        tp_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
        config.vocab_size,
    )


def local_config(config: ArchitectureConfig, shard: RankShard) -> ArchitectureConfig:
    """The rank's model shape: its query/KV heads and MLP columns; hidden size and vocabulary
    size stay the full model's (the vocabulary shard is sized by the model from its group)."""
    return dataclasses.replace(
        config,
        num_attention_heads=shard.num_q_heads,
        num_key_value_heads=shard.num_kv_heads,
        intermediate_size=shard.intermediate_size,
        head_dim=config.head_dim,
    )


def shard_tensors(
    tensors: Iterable[tuple[str, torch.Tensor]], config: ArchitectureConfig, shard: RankShard
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, this rank's slice) for each (name, full tensor)."""
    for name, tensor in tensors:
        yield name, shard_tensor(name, tensor, config, shard)


def shard_tensor(
    name: str, tensor: torch.Tensor, config: ArchitectureConfig, shard: RankShard
) -> torch.Tensor:
    """This rank's slice of one checkpoint tensor (a contiguous copy, or the tensor itself when
    it is replicated)."""
    dim = config.head_dim
    q = (shard.q_heads[0] * dim, shard.q_heads[1] * dim)
    kv = (shard.kv_heads[0] * dim, shard.kv_heads[1] * dim)
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return tensor[q[0] : q[1]].clone()
    if name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
        return tensor[kv[0] : kv[1]].clone()
    if name.endswith("o_proj.weight"):
        return tensor[:, q[0] : q[1]].contiguous()
    if name.endswith(("gate_proj.weight", "up_proj.weight")):
        return tensor[shard.intermediate[0] : shard.intermediate[1]].clone()
    if name.endswith("down_proj.weight"):
        return tensor[:, shard.intermediate[0] : shard.intermediate[1]].contiguous()
    if name in ("embed_tokens.weight", "lm_head.weight"):
        rows = tensor.new_zeros(shard.vocab_shard_size, tensor.shape[1])
        start, end = shard.vocab
        rows[: end - start] = tensor[start:end]
        return rows
    return tensor
