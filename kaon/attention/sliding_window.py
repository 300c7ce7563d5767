"""Sliding-window (local) attention over the paged KV cache, as Gemma 3's local layers use it.

A query at position ``p`` sees the keys at positions ``p - window + 1 .. p`` (Beltagy et al. 2020;
Hugging Face's ``sliding_window`` and llama.cpp's ``n_swa`` mean the same count). Every layer
writes every token's K/V (the block table is shared by all layers), but a local layer reads only
the blocks that hold a key inside some query's window:

    positions   0 ....... 15 | 16 ...... 31 | 32 ...... 47 | 48 .. 52      block_size 16, window 20
    block table [    b7      |      b2      |     b9       |    b4    ]    decode at position 52
    read                                    [  b9 (33..47 unmasked)  | b4 ]   b7, b2 never gathered

``build_sliding_window_metadata`` derives, once per step, the kept block tables and the masks
(``kpos <= qpos`` and ``qpos - kpos < window``, ANDed with the step's own prefill masks) from the
step's AttentionMetadata. When no request's context is longer than the window, it returns None and
the layers call the ordinary ``paged_attention`` (and its C++ decode kernel), which is then exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kaon.attention.metadata import AttentionMetadata
from kaon.attention.torch_backend import paged_attention


@dataclass
class WindowedPrefill:
    """One prefill chunk's view of the cache for a local layer."""

    query_start: int  # first row in the flattened batch
    query_len: int
    block_ids: torch.Tensor  # [num_kept_blocks] int64: the blocks that hold keys in the window
    num_keys: int  # keys read from those blocks (from the first kept block's first slot)
    mask: torch.Tensor  # [query_len, num_keys] bool, True where attention is allowed


@dataclass
class SlidingWindowMetadata:
    """Per-step inputs of the local layers (shared by all of them)."""

    window: int
    decode_block_tables: torch.Tensor | None  # [num_decodes, width] int64, kept blocks
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, width * block_size] bool
    prefills: list[WindowedPrefill]


def build_sliding_window_metadata(
    metadata: AttentionMetadata, window: int, block_size: int
) -> SlidingWindowMetadata | None:
    """The local layers' metadata for this step, or None when every request's context fits in
    ``window`` tokens (then full causal attention is the same thing).

    Reads the decode lengths on the host (one copy of a [num_decodes] tensor per step).
    """
    decode_lens = metadata.decode_seq_lens.tolist() if metadata.decode_seq_lens is not None else []
    longest = max([*decode_lens, *(chunk.seq_len for chunk in metadata.prefills)], default=0)
    if longest <= window:
        return None
    tables, mask = _windowed_decodes(metadata, decode_lens, window, block_size)
    prefills = [
        _windowed_prefill(chunk, window, block_size) for chunk in metadata.prefills
    ]  # fmt: skip
    return SlidingWindowMetadata(window, tables, mask, prefills)


def _windowed_decodes(
    metadata: AttentionMetadata, seq_lens: list[int], window: int, block_size: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Each decode's kept blocks, left-aligned, padded by repeating its last block (so that
    padding reads a block the request owns and is masked), and the matching mask."""
    if not seq_lens:
        return None, None
    tables = metadata.decode_block_tables
    assert tables is not None
    device = tables.device
    first = [max(0, n - window) // block_size for n in seq_lens]  # first kept block index
    last = [(n - 1) // block_size for n in seq_lens]
    width = max(b - a + 1 for a, b in zip(first, last, strict=True))
    columns = torch.arange(width, device=device)
    first_t = torch.tensor(first, dtype=torch.int64, device=device).unsqueeze(1)
    last_t = torch.tensor(last, dtype=torch.int64, device=device).unsqueeze(1)
    kept = torch.gather(tables, 1, torch.minimum(first_t + columns, last_t))  # [B, width]
    # Absolute position of every gathered slot; padding repeats blocks, so test the column.
    slots = torch.arange(width * block_size, device=device)
    positions = first_t * block_size + slots  # [B, width * block_size]
    lens = torch.tensor(seq_lens, dtype=torch.int64, device=device).unsqueeze(1)
    mask = (positions < lens) & (positions >= lens - window)
    return kept, mask.view(len(seq_lens), 1, 1, -1)


def _windowed_prefill(chunk, window: int, block_size: int) -> WindowedPrefill:
    """The blocks and mask one prefill chunk (``PrefillChunk``) needs in a local layer."""
    first_key = max(0, chunk.num_context_tokens - window + 1)  # oldest key any query sees
    first_block = first_key // block_size
    start = first_block * block_size
    num_blocks = -(-chunk.seq_len // block_size)
    device = chunk.block_ids.device
    query_positions = torch.arange(chunk.query_len, device=device).unsqueeze(1)
    query_positions = query_positions + chunk.num_context_tokens
    key_positions = torch.arange(start, chunk.seq_len, device=device).unsqueeze(0)
    mask = (key_positions <= query_positions) & (query_positions - key_positions < window)
    if chunk.mask is not None:  # the step's own mask (causal, or narrower)
        mask &= chunk.mask[:, start:]
    return WindowedPrefill(
        query_start=chunk.query_start,
        query_len=chunk.query_len,
        block_ids=chunk.block_ids[first_block:num_blocks],
        num_keys=chunk.seq_len - start,
        mask=mask,
    )


def sliding_window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    local: SlidingWindowMetadata | None,
    scale: float,
) -> torch.Tensor:
    """``paged_attention`` restricted to each query's last ``local.window`` keys.

    Args:
        query: [num_tokens, num_heads, head_dim]; key, value: [num_tokens, num_kv_heads,
            head_dim], already written to the cache.
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        local: from ``build_sliding_window_metadata``; None = no context exceeds the window.
    Returns:
        [num_tokens, num_heads * head_dim], same dtype as query.
    """
    if local is None:
        return paged_attention(query, key, value, key_cache, value_cache, metadata, scale)
    num_tokens, num_heads, head_dim = query.shape
    output = torch.empty_like(query)
    num_decodes = metadata.num_decode_tokens
    if num_decodes:
        assert local.decode_block_tables is not None
        keys = _read_blocks(key_cache, local.decode_block_tables, query.dtype)
        values = _read_blocks(value_cache, local.decode_block_tables, query.dtype)
        output[:num_decodes] = _attend(
            query[:num_decodes].unsqueeze(2), keys, values, local.decode_mask, scale
        ).squeeze(2)
    for chunk in local.prefills:
        rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
        table = chunk.block_ids.unsqueeze(0)
        keys = _read_blocks(key_cache, table, query.dtype)[:, :, : chunk.num_keys]
        values = _read_blocks(value_cache, table, query.dtype)[:, :, : chunk.num_keys]
        chunk_query = query[rows].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        out = _attend(chunk_query, keys, values, chunk.mask, scale)  # [1, H, q, D]
        output[rows] = out.squeeze(0).transpose(0, 1)
    return output.view(num_tokens, num_heads * head_dim)


def _read_blocks(cache: torch.Tensor, tables: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """cache rows of ``tables`` [B, width] as [B, num_kv_heads, width * block_size, head_dim]."""
    batch, width = tables.shape
    _, block_size, num_kv_heads, head_dim = cache.shape
    blocks = cache[tables].view(batch, width * block_size, num_kv_heads, head_dim)
    return blocks.transpose(1, 2).to(dtype)


def _attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """SDPA with grouped-query heads: query [B, H, q, D], keys/values [B, KVH, k, D]."""
    return F.scaled_dot_product_attention(
        query, keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )
