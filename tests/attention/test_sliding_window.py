"""Sliding-window paged attention: blocks wholly outside the window are never read (they hold NaN
here, which would poison any product that touched them) and the result equals dense attention
with the window mask."""

import torch
import torch.nn.functional as F

from kaon.attention.metadata import AttentionMetadata, PrefillChunk
from kaon.attention.sliding_window import build_sliding_window_metadata, sliding_window_attention

BLOCK_SIZE, WINDOW, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 4, 6, 4, 2, 8
# A decode at position 14 (keys 9..14: blocks 0 and 1 of its table are out of the window) and a
# 3-token prefill chunk after 10 cached tokens (keys 5..12: block 0 is out).
DECODE_TABLE, DECODE_LEN = [5, 1, 7, 3], 15
PREFILL_TABLE, PREFILL_CONTEXT, PREFILL_LEN = [2, 6, 4, 8], 10, 3
OUT_OF_WINDOW = [5, 1, 2]


def _dense_reference(query, keys, values, first_position):
    """query [q, H, D] at positions first_position.., keys/values [seq, KVH, D]."""
    q_pos = torch.arange(query.shape[0]).unsqueeze(1) + first_position
    k_pos = torch.arange(keys.shape[0]).unsqueeze(0)
    mask = (k_pos <= q_pos) & (q_pos - k_pos < WINDOW)
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
        attn_mask=mask, scale=HEAD_DIM**-0.5, enable_gqa=True,
    )  # fmt: skip
    return out.transpose(0, 1)


def _fill(cache, table, tensor):
    flat = cache.view(-1, NUM_KV_HEADS, HEAD_DIM)
    for position in range(tensor.shape[0]):
        flat[table[position // BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE] = tensor[position]


def test_window_reads_only_blocks_in_the_window_and_matches_dense():
    torch.manual_seed(0)
    shape = (10, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache, value_cache = torch.randn(shape), torch.randn(shape)
    decode_kv = torch.randn(2, DECODE_LEN, NUM_KV_HEADS, HEAD_DIM)
    prefill_kv = torch.randn(2, PREFILL_CONTEXT + PREFILL_LEN, NUM_KV_HEADS, HEAD_DIM)
    for cache, i in ((key_cache, 0), (value_cache, 1)):
        _fill(cache, DECODE_TABLE, decode_kv[i])
        _fill(cache, PREFILL_TABLE, prefill_kv[i])
        cache[OUT_OF_WINDOW] = float("nan")
    query = torch.randn(1 + PREFILL_LEN, NUM_HEADS, HEAD_DIM)
    step_kv = torch.cat((decode_kv[:, -1:], prefill_kv[:, PREFILL_CONTEXT:]), dim=1)
    rows = torch.arange(PREFILL_LEN).unsqueeze(1) + PREFILL_CONTEXT
    metadata = AttentionMetadata(
        slot_mapping=torch.zeros(4, dtype=torch.int64),  # unused: K/V are already cached
        num_decode_tokens=1,
        decode_block_tables=torch.tensor([DECODE_TABLE]),
        decode_seq_lens=torch.tensor([DECODE_LEN]),
        decode_mask=(torch.arange(16) < DECODE_LEN).view(1, 1, 1, -1),
        prefills=[
            PrefillChunk(
                query_start=1,
                query_len=PREFILL_LEN,
                num_context_tokens=PREFILL_CONTEXT,
                block_ids=torch.tensor(PREFILL_TABLE),
                mask=torch.arange(PREFILL_CONTEXT + PREFILL_LEN).unsqueeze(0) <= rows,
            )
        ],
    )
    local = build_sliding_window_metadata(metadata, WINDOW, BLOCK_SIZE)
    assert local is not None
    assert local.decode_block_tables.tolist() == [[7, 3]]
    assert local.prefills[0].block_ids.tolist() == [6, 4, 8]
    out = sliding_window_attention(
        query, step_kv[0], step_kv[1], key_cache, value_cache, metadata, local, HEAD_DIM**-0.5
    ).view(-1, NUM_HEADS, HEAD_DIM)
    assert not out.isnan().any()
    expected_decode = _dense_reference(query[:1], decode_kv[0], decode_kv[1], DECODE_LEN - 1)
    expected_prefill = _dense_reference(query[1:], prefill_kv[0], prefill_kv[1], PREFILL_CONTEXT)
    torch.testing.assert_close(out[:1], expected_decode, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1:], expected_prefill, rtol=0, atol=1e-6)


def test_no_window_metadata_when_every_context_fits():
    metadata = AttentionMetadata(
        slot_mapping=torch.zeros(1, dtype=torch.int64),
        num_decode_tokens=1,
        decode_block_tables=torch.tensor([[0, 1]]),
        decode_seq_lens=torch.tensor([WINDOW]),
        decode_mask=None,
        prefills=[],
    )
    assert build_sliding_window_metadata(metadata, WINDOW, BLOCK_SIZE) is None
