"""AttentionMetadata and the forward context, the one global of the engine.

The model runner builds one AttentionMetadata per step and sets it with ``forward_context`` around
the model call; every attention layer reads it instead of threading it through each module.

Batch layout (flattened tokens, decode requests first, then prefill chunks):

    tokens:  [d0 d1 d2 | p0 p0 p0 p0 | p1 p1]      query_start_loc = [0 1 2 3 7 9]
              decodes    prefill 0     prefill 1   seq_lens        = [c0+1 c1+1 c2+1 n0 n1]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class PrefillChunk:
    """One request computing several tokens this step (a prompt chunk or a recompute)."""

    query_start: int  # first row in the flattened batch
    query_len: int  # tokens computed this step
    num_context_tokens: int  # tokens already in the KV cache before this step
    block_ids: torch.Tensor  # [num_blocks] int64, the request's block table
    # [query_len, seq_len] bool, True where attention is allowed; None = plain causal, no context
    mask: torch.Tensor | None

    @property
    def seq_len(self) -> int:
        return self.num_context_tokens + self.query_len


@dataclass
class AttentionMetadata:
    """Per-step inputs of the attention layers (shared by all layers)."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: token -> block_id * block_size + offset
    num_decode_tokens: int  # the first rows are decodes, one per query position
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks] int64
    decode_seq_lens: torch.Tensor | None  # [num_decodes] int64, context incl. the new token
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillChunk]


_forward_context: AttentionMetadata | None = None


@contextmanager
def forward_context(metadata: AttentionMetadata) -> Iterator[None]:
    """Make ``metadata`` visible to attention layers for one forward pass; refuses nesting."""
    global _forward_context
    if _forward_context is not None:
        raise RuntimeError("forward_context is already set: forward passes do not nest")
    _forward_context = metadata
    try:
        yield
    finally:
        _forward_context = None


def get_attention_metadata() -> AttentionMetadata:
    if _forward_context is None:
        raise RuntimeError("attention called outside forward_context")
    return _forward_context
