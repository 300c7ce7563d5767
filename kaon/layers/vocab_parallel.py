"""Vocabulary-parallel embedding and LM head (Megatron-LM, Shoeybi et al. 2019, section 3).

Each rank holds ``vocab_shard_size`` rows of the table starting at ``vocab_start`` (the split
rule is in ``kaon.distributed.partition``). Without a group (one rank) both functions are the
plain single-rank operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kaon.distributed.communication import TensorParallelGroup


def embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    vocab_start: int,
    group: TensorParallelGroup | None,
) -> torch.Tensor:
    """input_ids [num_tokens] int64, weight [shard_rows, hidden] -> [num_tokens, hidden].

    With a group: ids outside this rank's rows give zero rows, and the all-reduce sums the one
    rank's row that holds each id.
    """
    if group is None:
        return F.embedding(input_ids, weight)
    local = input_ids - vocab_start
    outside = (local < 0) | (local >= weight.shape[0])
    hidden = F.embedding(local.masked_fill(outside, 0), weight)
    hidden.masked_fill_(outside.unsqueeze(1), 0.0)
    return group.all_reduce(hidden)


def lm_head_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    vocab_size: int,
    group: TensorParallelGroup | None,
) -> torch.Tensor | None:
    """hidden [rows, hidden], weight [shard_rows, hidden] -> logits [rows, vocab_size] float32.

    ``weight`` may also be a quantized LM head (``kaon.layers.quantization``: ``.linear(x)``).

    With a group the shards' logits are gathered on rank 0 (the padding columns past
    ``vocab_size`` dropped); the other ranks get ``None``: they do not sample.
    """
    quantized = not isinstance(weight, torch.Tensor)  # kaon.layers.quantization's own kernel
    logits = weight.linear(hidden) if quantized else F.linear(hidden, weight)
    if group is None:
        return logits.float()
    gathered = group.gather_last_dim(logits)
    if gathered is None:
        return None
    if gathered.shape[1] != vocab_size:
        gathered = gathered[:, :vocab_size].contiguous()
    return gathered.float()
