"""Paged decode attention on CUDA: a Triton kernel that reads K/V through the block table.

One program per (decode row, KV head): it loads the row's ``queries_per_kv`` query heads
([G, D]), walks the row's blocks (``seq_len`` read on the device, so the launch has a fixed grid
and can be captured in a CUDA graph) and keeps an online softmax (Milakov & Gimelshein 2018, as
FlashAttention does) in float32:

    m_new = max(m, max_j s_j);  l = l * exp(m - m_new) + sum_j exp(s_j - m_new)
    acc   = acc * exp(m - m_new) + sum_j exp(s_j - m_new) * v_j;   out = acc / l

A row with ``seq_len == 0`` (a padded CUDA-graph row) writes zeros. The plain PyTorch twin is
``torch_backend._decode_attention``; ``tests/attention/test_triton_decode.py`` compares the two
under Triton's CPU interpreter (``TRITON_INTERPRET=1``) when Triton is installed.

Triton is imported lazily: ``import kaon`` never needs it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)


def supports(query: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether the kernel applies: CUDA tensors (or CPU ones under the interpreter), a block size
    that is a power of two, Triton importable, and the kernel's self-test passed on this device
    (``self_test``)."""
    block_size = key_cache.shape[1]
    if block_size & (block_size - 1) or not _on_triton_device(query):
        return False
    return _kernel() is not None and self_test(query.device) == "ok"


@functools.cache
def self_test(device: torch.device) -> str:
    """``ok``, or why the kernel is not used on ``device``: compiles and runs it once on a small
    random case against a plain PyTorch softmax attention (max |diff| <= 1e-3, float32). A
    kernel that fails to build or disagrees leaves decodes on the torch path instead of taking
    the engine down. Run once per device and process (at the first decode or graph warm-up)."""
    if _kernel() is None:
        return "unavailable: Triton cannot be imported"
    generator = torch.Generator().manual_seed(0)
    num_blocks, block_size, num_kv_heads, head_dim, num_heads = 6, 16, 2, 64, 8
    key_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=generator)
    query = torch.randn(2, num_heads, head_dim, generator=generator)
    block_tables = torch.tensor([[4, 1, 3], [2, 0, 0]])
    seq_lens = torch.tensor([37, 5])
    scale = head_dim**-0.5
    try:
        output = torch.zeros(2, num_heads, head_dim, device=device)
        paged_decode_attention(
            output, query.to(device), key_cache.to(device), value_cache.to(device),
            block_tables.to(device), seq_lens.to(device), scale,
        )  # fmt: skip
        output = output.cpu()
    except Exception as error:  # any build or launch failure: fall back to torch
        logger.warning("Triton decode attention disabled: %r", error)
        return f"failed: {error!r}"
    worst = 0.0
    for row in range(2):
        length = int(seq_lens[row])
        keys = key_cache[block_tables[row]].reshape(-1, num_kv_heads, head_dim)[:length]
        values = value_cache[block_tables[row]].reshape(-1, num_kv_heads, head_dim)[:length]
        keys = keys.repeat_interleave(num_heads // num_kv_heads, dim=1)  # [len, H, D]
        values = values.repeat_interleave(num_heads // num_kv_heads, dim=1)
        weights = (torch.einsum("hd,nhd->hn", query[row], keys) * scale).softmax(-1)
        expected = torch.einsum("hn,nhd->hd", weights, values)
        worst = max(worst, (expected - output[row]).abs().max().item())
    if not worst <= 1e-3:
        logger.warning("Triton decode attention disabled: max |diff| %.3g vs torch", worst)
        return f"failed: max |diff| {worst:.3g} vs torch"
    return "ok"


def paged_decode_attention(
    output: torch.Tensor,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> None:
    """Write decode attention into the first ``num_decodes`` rows of ``output``.

    Args:
        output: [num_tokens >= num_decodes, num_heads, head_dim], the activation dtype.
        query: [num_decodes, num_heads, head_dim] (any row stride; head and dim contiguous).
        key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim], float32 or
            bfloat16/float16 (read as float32).
        block_tables: [num_decodes, max_blocks] int32/int64; entries past a row's last block
            are never read.
        seq_lens: [num_decodes] int32/int64, context length including the new token (0 = pad).
        scale: softmax scale (``head_dim ** -0.5``).
    """
    kernel = _kernel()
    assert kernel is not None, "Triton is not importable"
    num_decodes, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    assert query.stride(2) == 1 and key_cache.stride(3) == 1 and value_cache.stride(3) == 1
    queries_per_kv = num_heads // num_kv_heads
    kernel[(num_decodes, num_kv_heads)](
        output, query, key_cache, value_cache, block_tables, seq_lens, scale,
        query.stride(0), query.stride(1), output.stride(0), output.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0),
        QUERIES_PER_KV=queries_per_kv,
        GROUP_PAD=max(_next_power_of_2(queries_per_kv), 1),
        BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=_next_power_of_2(head_dim),
    )  # fmt: skip


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _on_triton_device(tensor: torch.Tensor) -> bool:
    if tensor.device.type == "cuda":
        return True
    return tensor.device.type == "cpu" and _interpreting()


def _interpreting() -> bool:
    from kaon import envs

    return envs.triton_interpret()


@functools.cache
def _kernel() -> Callable[..., Any] | None:
    """The jitted kernel, or None when Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def _paged_decode_kernel(
        out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, scale,
        stride_q_row, stride_q_head, stride_o_row, stride_o_head,
        stride_k_block, stride_k_slot, stride_k_head,
        stride_v_block, stride_v_slot, stride_v_head,
        stride_table_row,
        QUERIES_PER_KV: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        seq_len = tl.load(seq_lens_ptr + row)
        group = tl.arange(0, GROUP_PAD)
        heads = kv_head * QUERIES_PER_KV + group  # [G] query heads sharing this KV head
        head_ok = group < QUERIES_PER_KV
        dims = tl.arange(0, HEAD_DIM_PAD)
        dim_ok = dims < HEAD_DIM
        q_mask = head_ok[:, None] & dim_ok[None, :]
        q_offsets = row * stride_q_row + heads[:, None] * stride_q_head + dims[None, :]
        q = tl.load(q_ptr + q_offsets, mask=q_mask, other=0.0).to(tl.float32)  # [G, D]
        m = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
        total = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], dtype=tl.float32)
        slots = tl.arange(0, BLOCK_SIZE)
        num_blocks = tl.cdiv(seq_len, BLOCK_SIZE)
        block_index = 0
        # A while loop, not range(num_blocks): Triton's CPU interpreter cannot take a loaded
        # bound in range() with numpy >= 2.4; compiled, both are the same loop.
        while block_index < num_blocks:
            block_id = tl.load(block_tables_ptr + row * stride_table_row + block_index)
            valid = block_index * BLOCK_SIZE + slots < seq_len  # [S]
            kv_mask = valid[:, None] & dim_ok[None, :]
            k_offsets = (
                block_id.to(tl.int64) * stride_k_block
                + slots[:, None] * stride_k_slot
                + kv_head * stride_k_head
                + dims[None, :]
            )
            k = tl.load(k_cache_ptr + k_offsets, mask=kv_mask, other=0.0).to(tl.float32)
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [G, S]
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])  # [G, S]
            v_offsets = (
                block_id.to(tl.int64) * stride_v_block
                + slots[:, None] * stride_v_slot
                + kv_head * stride_v_head
                + dims[None, :]
            )
            v = tl.load(v_cache_ptr + v_offsets, mask=kv_mask, other=0.0).to(tl.float32)
            total = total * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m = m_new
            block_index += 1
        total = tl.where(total > 0.0, total, 1.0)  # seq_len 0: acc is 0, write zeros
        out = acc / total[:, None]
        o_offsets = row * stride_o_row + heads[:, None] * stride_o_head + dims[None, :]
        tl.store(out_ptr + o_offsets, out.to(out_ptr.dtype.element_ty), mask=q_mask)

    return _paged_decode_kernel
