"""The tensor-parallel split rule: which heads, MLP columns and vocabulary rows each rank holds.

Pure Python (no torch), so it is unit-tested on its own and shared by the loader (which slices the
checkpoint tensors) and the model (which sizes its parameters).

Attention is split by **KV-head groups**, as Megatron-LM (Shoeybi et al. 2019, section 3) splits
heads and as vLLM does for grouped-query attention: rank ``r`` holds a contiguous run of KV heads
plus every query head that reads them (``num_heads // num_kv_heads`` per KV head), so attention
needs no communication; only the output projection (row-parallel) ends in an all-reduce. When the
KV heads do not divide evenly, the first ``num_kv_heads % tp`` ranks hold one more. For the default
model (9 query heads, 3 KV heads) at ``tp = 2``: rank 0 holds KV heads 0-1 and query heads 0-5,
rank 1 holds KV head 2 and query heads 6-8.

The MLP's intermediate dimension is split the same way (contiguous, first ranks one larger):
gate/up are column-parallel, down is row-parallel. The vocabulary is split into equal padded
shards of ``ceil(vocab / tp)`` rows (rows past ``vocab_size`` are zero padding), so the logits of
all ranks gather into one equal-sized buffer.
"""

from __future__ import annotations

from dataclasses import dataclass


def split_sizes(total: int, tp_size: int) -> list[int]:
    """Sizes of ``tp_size`` contiguous parts of ``total``; the first ``total % tp_size`` parts
    are one larger. E.g. ``split_sizes(3, 2) == [2, 1]``, ``split_sizes(1536, 2) == [768, 768]``.

    Raises:
        ValueError: naming ``tensor_parallel_size`` when it is not positive or exceeds ``total``.
    """
    if tp_size < 1:
        raise ValueError(f"tensor_parallel_size must be a positive integer, got {tp_size}")
    if tp_size > total:
        raise ValueError(f"tensor_parallel_size {tp_size} exceeds the {total} parts to split")
    base, extra = divmod(total, tp_size)
    return [base + (1 if rank < extra else 0) for rank in range(tp_size)]


def _range(sizes: list[int], rank: int) -> tuple[int, int]:
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


@dataclass(frozen=True)
class RankShard:
    """What one tensor-parallel rank holds. Ranges are ``[start, end)`` in units of heads,
    intermediate columns or vocabulary rows of the full model."""

    rank: int
    tp_size: int
    kv_heads: tuple[int, int]
    q_heads: tuple[int, int]
    intermediate: tuple[int, int]
    vocab: tuple[int, int]  # real rows; the shard is ``vocab_shard_size`` rows, zero-padded
    vocab_shard_size: int

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def num_q_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def intermediate_size(self) -> int:
        return self.intermediate[1] - self.intermediate[0]


def vocab_shard_size(vocab_size: int, tp_size: int) -> int:
    """Rows of every rank's embedding / LM head shard: ``ceil(vocab_size / tp_size)``."""
    return -(-vocab_size // tp_size)


def plan_shard(
    rank: int,
    tp_size: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vocab_size: int,
) -> RankShard:
    """The shard of ``rank`` out of ``tp_size`` (see the module docstring for the rule).

    Raises:
        ValueError: naming ``tensor_parallel_size`` when the model cannot be split that way:
            more ranks than KV heads (KV-head replication is not implemented), or than
            intermediate columns.
    """
    if not 0 <= rank < tp_size:
        raise ValueError(f"rank {rank} is outside tensor_parallel_size {tp_size}")
    if tp_size > num_kv_heads:
        raise ValueError(
            f"tensor_parallel_size {tp_size} exceeds the model's {num_kv_heads} KV heads; "
            f"use at most {num_kv_heads} ranks (KV-head replication is not implemented)"
        )
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads "
            f"{num_kv_heads}"
        )
    group = num_heads // num_kv_heads
    kv_heads = _range(split_sizes(num_kv_heads, tp_size), rank)
    per_rank = vocab_shard_size(vocab_size, tp_size)
    vocab_start = min(rank * per_rank, vocab_size)
    return RankShard(
        rank=rank,
        tp_size=tp_size,
        kv_heads=kv_heads,
        q_heads=(kv_heads[0] * group, kv_heads[1] * group),
        intermediate=_range(split_sizes(intermediate_size, tp_size), rank),
        vocab=(vocab_start, min(vocab_start + per_rank, vocab_size)),
        vocab_shard_size=per_rank,
    )
