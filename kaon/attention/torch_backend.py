"""Paged attention in plain PyTorch: the CPU path, and the reference for faster backends.

KV cache layout per layer (one tensor each for K and V):

    [num_blocks, block_size, num_kv_heads, head_dim]
    slot s = block_id * block_size + offset  ->  cache.view(-1, num_kv_heads, head_dim)[s]

New keys/values are first written at ``slot_mapping``; attention then reads each request's
context through its block table; a cache of another dtype than the activations
(``--kv-cache-dtype``) is cast on write and on read. Decodes are batched in one padded call (a mask
hides slots past each request's length); float32 CPU decodes over a float32 cache instead use the
gather-free C++ kernel of ``cpu_decode`` when it builds, with ``_decode_attention`` as its
reference; CUDA decodes use the Triton kernel of ``triton_decode`` (gather-free, and with a fixed
launch grid, so it can be captured in a CUDA graph). Prefill chunks run one request at a time
with a causal mask that is offset by the tokens already cached. Grouped-query attention (Ainslie
et al. 2023) maps query head ``h`` to KV head ``h // (num_heads // num_kv_heads)``, as Hugging
Face's ``repeat_kv`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kaon.attention import cpu_decode, triton_decode
from kaon.attention.metadata import AttentionMetadata


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store this step's K/V ([num_tokens, num_kv_heads, head_dim]) into their cache slots, cast
    to the cache dtype (``--kv-cache-dtype``) when it differs from the activations'."""
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    if key.dtype != key_cache.dtype:
        key, value = key.to(key_cache.dtype), value.to(value_cache.dtype)
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Attention over each request's cached context plus this step's tokens.

    Args:
        query: [num_tokens, num_heads, head_dim]
        key, value: [num_tokens, num_kv_heads, head_dim], this step's (already in the cache)
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    Returns:
        [num_tokens, num_heads * head_dim], same dtype as query.
    """
    num_tokens, num_heads, head_dim = query.shape
    output = torch.empty(num_tokens, num_heads, head_dim, dtype=query.dtype, device=query.device)
    num_decodes = metadata.num_decode_tokens
    if num_decodes:
        decode_query = query[:num_decodes]
        kernel = _decode_kernel(decode_query, key_cache)
        if kernel is not None:  # writes its rows of ``output`` in place
            block_tables, seq_lens = metadata.decode_block_tables, metadata.decode_seq_lens
            kernel(output, decode_query, key_cache, value_cache, block_tables, seq_lens, scale)
        else:
            output[:num_decodes] = _decode_attention(
                decode_query, key_cache, value_cache, metadata, scale
            )
    for chunk in metadata.prefills:
        rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
        if chunk.mask is None:  # no cached context: the chunk's own K/V, causal
            chunk_key, chunk_value = key[rows], value[rows]
        else:
            chunk_key = _gather(key_cache, chunk.block_ids, chunk.seq_len).to(query.dtype)
            chunk_value = _gather(value_cache, chunk.block_ids, chunk.seq_len).to(query.dtype)
        output[rows] = _prefill_attention(query[rows], chunk_key, chunk_value, chunk.mask, scale)
    return output.view(num_tokens, num_heads * head_dim)


def _decode_kernel(query: torch.Tensor, key_cache: torch.Tensor) -> Callable[..., None] | None:
    """The C++ decode kernel (CPU) or the Triton one (CUDA) when it applies to these tensors and
    builds here, else None (the plain PyTorch ``_decode_attention``)."""
    if cpu_decode.supports(query, key_cache):
        return cpu_decode.loaded_kernel()
    if query.is_cuda and triton_decode.supports(query, key_cache):
        return triton_decode.paged_decode_attention
    return None


def _gather(cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """One request's first ``seq_len`` cached tokens: [seq_len, num_kv_heads, head_dim]."""
    blocks = cache.index_select(0, block_ids)  # [num_blocks, block_size, kv_heads, head_dim]
    return blocks.view(-1, cache.shape[2], cache.shape[3])[:seq_len]


def _prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """query [q, H, D], key/value [k, KVH, D], mask [q, k] bool or None (causal)."""
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1).unsqueeze(0),  # [1, H, q, D]
        key.transpose(0, 1).unsqueeze(0),  # [1, KVH, k, D]
        value.transpose(0, 1).unsqueeze(0),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(0).transpose(0, 1)  # [q, H, D]


def _decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """One query token per request, contexts padded to the longest: returns [num_decodes, H, D]."""
    block_tables = metadata.decode_block_tables
    assert block_tables is not None and metadata.decode_mask is not None
    num_decodes, max_blocks = block_tables.shape
    _, block_size, num_kv_heads, head_dim = key_cache.shape
    padded_len = max_blocks * block_size
    keys = key_cache[block_tables].view(num_decodes, padded_len, num_kv_heads, head_dim)
    values = value_cache[block_tables].view(num_decodes, padded_len, num_kv_heads, head_dim)
    if keys.dtype != query.dtype:  # a --kv-cache-dtype other than the activations'
        keys, values = keys.to(query.dtype), values.to(query.dtype)
    out = F.scaled_dot_product_attention(
        query.unsqueeze(2),  # [B, H, 1, D]
        keys.transpose(1, 2),  # [B, KVH, S, D]
        values.transpose(1, 2),
        attn_mask=metadata.decode_mask,  # [B, 1, 1, S]
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(2)
