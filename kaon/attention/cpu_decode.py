"""Gather-free paged decode attention for float32 on CPU: a small C++ kernel built on first use.

The torch path (``torch_backend._decode_attention``) first copies every request's context out of
the paged cache (``key_cache[block_tables]``), padded to the longest request, and then runs SDPA
with a padding mask: the KV cache crosses memory three times. This kernel reads each K/V row once,
in place, through the block table:

    for each (request b, kv head h), in parallel:          query heads g = h*G .. h*G+G-1
        scores[g, t] = scale * q[b, g] . K[block_tables[b, t // block_size], t % block_size, h]
        out[b, g]    = softmax(scores[g, :seq_lens[b]]) @ V[... same slots ..., h]

Softmax is exact (max-subtracted, float32). Each (request, kv head) is computed alone, so results
do not depend on the batch. The kernel is compiled once by ``torch.utils.cpp_extension.load_inline``
and cached in the torch extensions directory (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``); when the build or import fails, or ``KAON_DISABLE_CPP_ATTENTION=1``,
``load_kernel`` returns None and callers keep the torch path, which is also the reference the tests
compare against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from kaon import envs
from kaon.kernels.cpp_build import load_cpp_module

logger = logging.getLogger(__name__)

_CPP_SOURCE = r"""
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// out [B, H, D], query [B, H, D]: any row strides, last dim contiguous.
// key_cache/value_cache [num_blocks, block_size, KVH, D] contiguous; block_tables [B, max_blocks]
// int64 with unit last stride; seq_lens [B] int64 contiguous.
void paged_decode_attention(
    torch::Tensor out, torch::Tensor query, torch::Tensor key_cache, torch::Tensor value_cache,
    torch::Tensor block_tables, torch::Tensor seq_lens, double scale) {
  const int64_t num_requests = query.size(0), num_heads = query.size(1), head_dim = query.size(2);
  const int64_t block_size = key_cache.size(1), num_kv_heads = key_cache.size(2);
  const int64_t group = num_heads / num_kv_heads;
  const int64_t token_stride = num_kv_heads * head_dim, block_stride = block_size * token_stride;
  const float* q_ptr = query.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  const float* k_ptr = key_cache.data_ptr<float>();
  const float* v_ptr = value_cache.data_ptr<float>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t q_stride0 = query.stride(0), q_stride1 = query.stride(1);
  const int64_t o_stride0 = out.stride(0), o_stride1 = out.stride(1);
  const int64_t table_stride = block_tables.stride(0);
  const float fscale = static_cast<float>(scale);
  int64_t max_len = 1;
  for (int64_t b = 0; b < num_requests; ++b) max_len = std::max(max_len, lens[b]);
  // Short contexts run on the calling thread: waking the pool costs more than the work.
  const int64_t grain = std::max<int64_t>(1, 2048 / max_len);
  at::parallel_for(0, num_requests * num_kv_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, acc(group * head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_kv_heads, kv_head = task % num_kv_heads;
      const int64_t len = lens[b];
      const int64_t* table = tables + b * table_stride;
      const float* q = q_ptr + b * q_stride0 + kv_head * group * q_stride1;
      scores.resize(group * len);
      for (int64_t t = 0; t < len; ++t) {
        const float* k = k_ptr + table[t / block_size] * block_stride +
                         (t % block_size) * token_stride + kv_head * head_dim;
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = q + g * q_stride1;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < head_dim; ++d) dot += qg[d] * k[d];
          scores[g * len + t] = dot * fscale;
        }
      }
      std::vector<float> inv_sum(group);
      for (int64_t g = 0; g < group; ++g) {
        float* row = scores.data() + g * len;
        float row_max = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < len; ++t) row_max = std::max(row_max, row[t]);
        float sum = 0.f;
        for (int64_t t = 0; t < len; ++t) {
          row[t] = std::exp(row[t] - row_max);
          sum += row[t];
        }
        inv_sum[g] = 1.f / sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < len; ++t) {
        const float* v = v_ptr + table[t / block_size] * block_stride +
                         (t % block_size) * token_stride + kv_head * head_dim;
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * len + t];
          float* a = acc.data() + g * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) a[d] += p * v[d];
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* o = out_ptr + b * o_stride0 + (kv_head * group + g) * o_stride1;
        const float* a = acc.data() + g * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) o[d] = a[d] * inv_sum[g];
      }
    }
  });
}
"""

_FUNCTION = "paged_decode_attention"
_UNSET = object()
_kernel: object = _UNSET


def load_kernel() -> Callable[..., None] | None:
    """The compiled kernel, building it on the first call; None when disabled or unbuildable.

    Signature: ``kernel(out, query, key_cache, value_cache, block_tables, seq_lens, scale)``,
    writes ``out`` [B, H, D] float32 (see the module docstring for the other shapes).
    """
    global _kernel
    if _kernel is _UNSET:
        if envs.disable_cpp_attention():
            logger.info("KAON_DISABLE_CPP_ATTENTION is set: decode attention uses torch")
            _kernel = None
        else:
            module = load_cpp_module("kaon_cpu_decode_attention", _CPP_SOURCE, [_FUNCTION])
            _kernel = None if module is None else getattr(module, _FUNCTION)
    return _kernel  # type: ignore[return-value]


def supports(query: torch.Tensor, key_cache: torch.Tensor) -> bool:
    """Whether the kernel handles these tensors: float32 on CPU, contiguous cache, unit last dim."""
    return (
        query.device.type == "cpu"
        and query.dtype == torch.float32
        and key_cache.dtype == torch.float32
        and key_cache.is_contiguous()
        and query.stride(-1) == 1
        and query.shape[1] % key_cache.shape[2] == 0
    )
