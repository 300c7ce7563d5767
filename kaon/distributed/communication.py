"""Collectives of one tensor-parallel group (torch.distributed: gloo on CPU, NCCL on CUDA).

The model calls these only when it was built with a group (``tensor_parallel_size > 1``); a
single-rank model holds ``None`` and never enters this module, so TP=1 pays no collective and no
copy.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class TensorParallelGroup:
    """The ranks that shard one model. ``rank`` 0 lives in the engine process and samples.

    ``group`` is the torch.distributed process group (``None``: the default one).
    """

    def __init__(self, rank: int, world_size: int, group: dist.ProcessGroup | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.group = group

    @property
    def is_driver(self) -> bool:
        """Rank 0: the rank that gathers logits and samples."""
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` (any shape) over the ranks, in place; returns it.

        Used after the row-parallel o_proj / down_proj ([num_tokens, hidden_size]) and the
        vocabulary-parallel embedding. Raises RuntimeError (from torch.distributed) when a peer
        died or the group timeout passed.
        """
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's ``[rows, shard]`` along the last dim on rank 0.

        Returns ``[rows, world_size * shard]`` on rank 0 and ``None`` elsewhere (only rank 0
        samples, so the other ranks need not receive the logits: a gather moves half the bytes
        of an all-gather at TP=2). All ranks' shards must have the same shape.
        """
        tensor = tensor.contiguous()
        if self.rank != 0:
            dist.gather(tensor, None, dst=0, group=self.group)
            return None
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.gather(tensor, parts, dst=0, group=self.group)
        return torch.cat(parts, dim=-1)

    def min_int(self, value: int) -> int:
        """The minimum of an integer over the ranks (on CPU: gloo), e.g. the KV cache blocks
        that fit on every rank."""
        buffer = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(buffer, op=dist.ReduceOp.MIN, group=self.group)
        return int(buffer.item())
