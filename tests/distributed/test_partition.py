"""The tensor-parallel split rule and the per-rank slicing of checkpoint tensors (no processes)."""

import dataclasses

import pytest
import torch

from kaon.distributed.partition import plan_shard, split_sizes, vocab_shard_size
from kaon.models.architecture import ArchitectureConfig
from kaon.models.loader.tp_shard import local_config, plan_for, shard_tensor

# The default model: SmolLM2-135M (9 query heads, 3 KV heads, head_dim 64).
SMOLLM2 = ArchitectureConfig(
    architecture="LlamaForCausalLM",
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
)


def test_split_sizes():
    assert split_sizes(3, 1) == [3]
    assert split_sizes(3, 2) == [2, 1]
    assert split_sizes(3, 3) == [1, 1, 1]
    assert split_sizes(1536, 2) == [768, 768]
    assert split_sizes(10, 4) == [3, 3, 2, 2]


def test_default_model_tp2_is_split_by_kv_head_groups_unevenly():
    rank0, rank1 = (plan_for(SMOLLM2, rank, 2) for rank in (0, 1))
    assert (rank0.kv_heads, rank0.q_heads) == ((0, 2), (0, 6))
    assert (rank1.kv_heads, rank1.q_heads) == ((2, 3), (6, 9))
    assert rank0.intermediate == (0, 768) and rank1.intermediate == (768, 1536)
    assert rank0.vocab == (0, 24576) and rank1.vocab == (24576, 49152)
    assert rank0.vocab_shard_size == rank1.vocab_shard_size == 24576


def test_tp1_holds_everything():
    shard = plan_for(SMOLLM2, 0, 1)
    assert (shard.kv_heads, shard.q_heads, shard.intermediate) == ((0, 3), (0, 9), (0, 1536))
    assert shard.vocab == (0, 49152) and shard.vocab_shard_size == 49152


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "tp_size"),
    [(9, 3, 2), (9, 3, 3), (32, 8, 3), (32, 8, 8), (12, 12, 5), (14, 2, 2)],
)
def test_shards_cover_every_head_once_and_keep_groups_together(num_heads, num_kv_heads, tp_size):
    group = num_heads // num_kv_heads
    shards = [plan_shard(r, tp_size, num_heads, num_kv_heads, 100, 1000) for r in range(tp_size)]
    q_heads = [h for s in shards for h in range(*s.q_heads)]
    kv_heads = [h for s in shards for h in range(*s.kv_heads)]
    assert q_heads == list(range(num_heads)) and kv_heads == list(range(num_kv_heads))
    for shard in shards:  # every query head's KV head (h // group) lives on the same rank
        assert {h // group for h in range(*shard.q_heads)} == set(range(*shard.kv_heads))
    assert [s.intermediate_size for s in shards] == split_sizes(100, tp_size)


def test_vocab_shards_are_padded_to_equal_size():
    assert vocab_shard_size(10, 3) == 4
    shards = [plan_shard(r, 3, 3, 3, 9, 10) for r in range(3)]
    assert [s.vocab for s in shards] == [(0, 4), (4, 8), (8, 10)]
    assert {s.vocab_shard_size for s in shards} == {4}


def test_more_ranks_than_kv_heads_is_rejected_naming_tensor_parallel_size():
    with pytest.raises(ValueError, match="tensor_parallel_size 4 exceeds the model's 3 KV heads"):
        plan_for(SMOLLM2, 0, 4)
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        split_sizes(3, 0)


def test_local_config_has_the_ranks_heads_and_mlp_columns():
    configs = [local_config(SMOLLM2, plan_for(SMOLLM2, rank, 2)) for rank in (0, 1)]
    assert [(c.num_attention_heads, c.num_key_value_heads) for c in configs] == [(6, 2), (3, 1)]
    assert [c.intermediate_size for c in configs] == [768, 768]
    assert {c.head_dim for c in configs} == {64} and {c.vocab_size for c in configs} == {49152}
    assert [c.kv_bytes_per_token for c in configs] == [2 * 30 * 2 * 64, 2 * 30 * 1 * 64]


def test_sharded_projections_recombine_to_the_full_layer():
    """Column-parallel q/k/v and gate/up, row-parallel o/down: the ranks' partial outputs sum
    to the unsharded result (float64, so the check is exact up to rounding)."""
    config = dataclasses.replace(SMOLLM2, hidden_size=16, intermediate_size=12, head_dim=4)
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    x_attn, x_mlp = rand(5, 9 * 4), rand(5, 12)
    o_proj, down = rand(16, 9 * 4), rand(16, 12)
    q_proj, k_proj, gate, embed = rand(9 * 4, 16), rand(3 * 4, 16), rand(12, 16), rand(10, 16)
    shards = [plan_for(dataclasses.replace(config, vocab_size=10), r, 2) for r in (0, 1)]
    cut = [{n: shard_tensor(n, t, config, s) for n, t in _named(q_proj, k_proj, gate, o_proj,
           down, embed)} for s in shards]  # fmt: skip
    assert torch.equal(torch.cat([c["layers.0.self_attn.q_proj.weight"] for c in cut]), q_proj)
    assert torch.equal(torch.cat([c["layers.0.self_attn.k_proj.weight"] for c in cut]), k_proj)
    assert torch.equal(torch.cat([c["layers.0.mlp.gate_proj.weight"] for c in cut]), gate)
    assert [c["embed_tokens.weight"].shape[0] for c in cut] == [5, 5]
    assert torch.equal(torch.cat([c["embed_tokens.weight"] for c in cut]), embed)
    attn_sum = sum(
        x_attn[:, s.q_heads[0] * 4 : s.q_heads[1] * 4] @ c["layers.0.self_attn.o_proj.weight"].T
        for s, c in zip(shards, cut, strict=True)
    )
    mlp_sum = sum(
        x_mlp[:, slice(*s.intermediate)] @ c["layers.0.mlp.down_proj.weight"].T
        for s, c in zip(shards, cut, strict=True)
    )
    torch.testing.assert_close(attn_sum, x_attn @ o_proj.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(mlp_sum, x_mlp @ down.T, rtol=0, atol=1e-12)
    norm = torch.ones(16, dtype=torch.float64)
    assert shard_tensor("layers.0.input_layernorm.weight", norm, config, shards[1]) is norm


def _named(q_proj, k_proj, gate, o_proj, down, embed):
    return [
        ("layers.0.self_attn.q_proj.weight", q_proj),
        ("layers.0.self_attn.k_proj.weight", k_proj),
        ("layers.0.mlp.gate_proj.weight", gate),
        ("layers.0.self_attn.o_proj.weight", o_proj),
        ("layers.0.mlp.down_proj.weight", down),
        ("embed_tokens.weight", embed),
    ]
