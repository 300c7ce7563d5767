"""Vocabulary-parallel embedding and LM head (Megatron-LM, Shoeybi et al. 2019, section 3).

Each rank holds ``vocab_shard_size`` rows of the table starting at ``vocab_start`` (the split
rule is in ``kaon.distributed.partition``). Without a group (one rank) both functions are the
plain single-rank operations.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from kaon.distributed.communication import TensorParallelGroup
from kaon.kernels import cpu_gemm
from kaon.layers.packed_linear import PackedLinearWeight

logger = logging.getLogger(__name__)


def embed(
    input_ids: torch.Tensor,
    weight: torch.Tensor,
    vocab_start: int,
    group: TensorParallelGroup | None,
) -> torch.Tensor:
    """input_ids [num_tokens] int64, weight [shard_rows, hidden] -> [num_tokens, hidden].

    With a group: ids outside this rank's rows give zero rows, and the all-reduce sums the one
    rank's row that holds each id. ``weight`` may also be a block-quantized table
    (``GGUFBlockWeight.embedding``: only the requested rows are dequantized; one rank only).
    """
    if not isinstance(weight, torch.Tensor):
        assert group is None, "block-quantized embeddings are loaded on one rank only"
        return weight.embedding(input_ids)
    if group is None:
        return F.embedding(input_ids, weight)
    local = input_ids - vocab_start
    outside = (local < 0) | (local >= weight.shape[0])
    hidden = F.embedding(local.masked_fill(outside, 0), weight)
    hidden.masked_fill_(outside.unsqueeze(1), 0.0)
    return group.all_reduce(hidden)


def pack_lm_head(weight: torch.Tensor) -> torch.Tensor | PackedLinearWeight | None:
    """A packed copy of a float32 CPU LM head weight [rows, hidden], or None when it does not
    apply (another device or dtype, a quantized head, no oneDNN, or packing failed).

    kaon's AVX2 GEMM (``kaon.kernels.cpu_gemm``, a ``PackedLinearWeight``) when the engine
    loaded it: on the AMD EPYC (Zen 3) machines oneDNN's packed product read this head at less
    than half the rate of kaon's kernel at batch 1 (issue 12, BENCHMARKS.md); both are
    batch-invariant. Otherwise oneDNN's packed weight, as follows.

    Why: MKL's GEMM through ``F.linear`` on the [49152, 576] LM head of SmolLM2 ran at a third of
    the rate of the layers' GEMMs here (batch 8: 20.8 ms against 7.2 ms packed; batch 64: 26.2
    against 17.7; batch 1: 5.8 against 6.4), and its rows changed with the batch size in the last
    bits. oneDNN's packed product (``torch.ops.mkldnn._reorder_linear_weight`` /
    ``_linear_pointwise``, the pair torch's inductor uses for frozen CPU linears) gives each row
    the same bits whatever the number of rows, so logits do not depend on the batch. The packed
    copy costs the weight's bytes again (113 MB for SmolLM2's tied embedding).
    """
    if (
        not isinstance(weight, torch.Tensor)
        or weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or weight.dim() != 2
        or not torch.backends.mkldnn.is_available()
    ):
        return None
    ops = cpu_gemm.loaded_ops()
    if ops is not None:
        return PackedLinearWeight(weight.detach().t(), ops)
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())
    except (RuntimeError, AttributeError) as error:  # op missing or unsupported here
        logger.info("oneDNN LM head packing unavailable (%s): using F.linear", error)
        return None


def lm_head_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    vocab_size: int,
    group: TensorParallelGroup | None,
    packed: torch.Tensor | PackedLinearWeight | None = None,
) -> torch.Tensor | None:
    """hidden [rows, hidden], weight [shard_rows, hidden] -> logits [rows, vocab_size] float32.

    ``weight`` may also be a quantized LM head (``kaon.layers.quantization``: ``.linear(x)``).
    ``packed``: ``pack_lm_head(weight)``; when given, the product runs on it instead.

    With a group the shards' logits are gathered on rank 0 (the padding columns past
    ``vocab_size`` dropped); the other ranks get ``None``: they do not sample.
    """
    quantized = not isinstance(weight, torch.Tensor)  # kaon.layers.quantization's own kernel
    if isinstance(packed, PackedLinearWeight):
        logits = packed.linear(hidden)
    elif packed is not None:
        logits = torch.ops.mkldnn._linear_pointwise(
            hidden.contiguous(), packed, None, "none", [None], ""
        )
    else:
        logits = weight.linear(hidden) if quantized else F.linear(hidden, weight)
    if group is None:
        return logits.float()
    gathered = group.gather_last_dim(logits)
    if gathered is None:
        return None
    if gathered.shape[1] != vocab_size:
        gathered = gathered[:, :vocab_size].contiguous()
    return gathered.float()
