"""Gather-free paged decode attention for float32 on CPU: a small C++ kernel built on first use.

The torch path (``torch_backend._decode_attention``) first copies every request's context out of
the paged cache (``key_cache[block_tables]``), padded to the longest request, and then runs SDPA
with a padding mask: the KV cache crosses memory three times. This kernel reads each K/V row once,
in place, through the block table:

    for each request b (and, with fewer requests than 2 x threads, each kv head), in parallel:
        scores[g, t] = scale * q[b, g] . K[block_tables[b, t // block_size], t % block_size, g // G]
        out[b, g]    = softmax(scores[g, :seq_lens[b]]) @ V[... same slots ..., g // G]

(G = num_heads // num_kv_heads.) With a task per request, each cached token's K (and V) row of
all KV heads is read as one contiguous stretch; the kernel is bound by those reads (2 x seq_len x
num_kv_heads x head_dim x 4 bytes per request and layer). Dot products, the exponentials and the
V accumulation use AVX2/FMA when the build targets it: e^x by Cephes' expf polynomial (relative
error about 1e-7), a scalar loop otherwise. Softmax is max-subtracted, in float32. A head's result
does not depend on the other requests in the batch, nor on how heads are grouped into tasks: every
head's arithmetic is the same sequence of operations. The kernel is compiled once per install
(``kaon.kernels.cpp_build``) when the engine loads; when the build or import fails, or
``KAON_DISABLE_CPP_ATTENTION=1``, ``load_kernel`` returns None and callers keep the torch path,
which is also the reference the tests compare against. ``loaded_kernel`` (the forward pass) only
reads what was loaded: it never compiles.
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
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KAON_AVX2 1
#endif

namespace {

#ifdef KAON_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x for x <= 88, 8 lanes: x = n ln2 + r with |r| <= ln2 / 2, e^r by the degree-7 polynomial of
// Cephes' expf (S. Moshier, Cephes Math Library), 2^n from the exponent bits. Inputs below -87
// are clamped there (their e^x < 1.7e-38 underflows to that tiny normal value instead of 0).
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t d = 0;
  float sum = 0.f;
#ifdef KAON_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; d + 16 <= n; d += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), acc1);
  }
  for (; d + 8 <= n; d += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc0);
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// row[t] = e^(row[t] - row_max) for t < n; returns their sum.
inline float exp_shifted(float* row, int64_t n, float row_max) {
  int64_t t = 0;
  float sum = 0.f;
#ifdef KAON_AVX2
  const __m256 shift = _mm256_set1_ps(row_max);
  __m256 acc = _mm256_setzero_ps();
  for (; t + 8 <= n; t += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + t), shift));
    _mm256_storeu_ps(row + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  sum = hsum(acc);
#endif
  for (; t < n; ++t) {
    row[t] = std::exp(row[t] - row_max);
    sum += row[t];
  }
  return sum;
}

// acc[d] += p * v[d]
inline void axpy(float* acc, float p, const float* v, int64_t n) {
  int64_t d = 0;
#ifdef KAON_AVX2
  const __m256 pv = _mm256_set1_ps(p);
  for (; d + 8 <= n; d += 8)
    _mm256_storeu_ps(acc + d,
                     _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + d), _mm256_loadu_ps(acc + d)));
#endif
  for (; d < n; ++d) acc[d] += p * v[d];
}

// o[d] = inv_sum * sum_t p[t] * v_t[d], t in token order (the same sequence of fmadds per
// element as axpy over the tokens); for head_dim 64 the 8 partial rows stay in registers.
inline void accumulate_values(float* o, const float* p, int64_t len, const float* v_base,
                              const int64_t* table, int64_t block_size, int64_t block_stride,
                              int64_t token_stride, int64_t head_dim, float inv_sum) {
#ifdef KAON_AVX2
  if (head_dim == 64) {
    __m256 a[8];
    for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
    for (int64_t t = 0, blk = 0; t < len; ++blk) {
      const float* v = v_base + table[blk] * block_stride;
      for (int64_t off = 0; off < block_size && t < len; ++off, ++t, v += token_stride) {
        const __m256 pv = _mm256_set1_ps(p[t]);
        for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + 8 * i), a[i]);
      }
    }
    for (int i = 0; i < 8; ++i) {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, a[i]);
      for (int j = 0; j < 8; ++j) o[8 * i + j] = tmp[j] * inv_sum;
    }
    return;
  }
#endif
  std::vector<float> acc(head_dim, 0.f);
  for (int64_t t = 0, blk = 0; t < len; ++blk) {
    const float* v = v_base + table[blk] * block_stride;
    for (int64_t off = 0; off < block_size && t < len; ++off, ++t, v += token_stride)
      axpy(acc.data(), p[t], v, head_dim);
  }
  for (int64_t d = 0; d < head_dim; ++d) o[d] = acc[d] * inv_sum;
}

}  // namespace

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
  // Tasks are (request, run of query heads): with enough requests a task takes all of a
  // request's heads; with few requests each query head is its own task so both threads share a
  // long context (a single request's 9 heads split 5 / 4, its 3 KV heads would split 2 / 1).
  const int64_t threads = at::get_num_threads();
  const int64_t heads_per_task = num_requests >= 2 * threads ? num_heads : 1;
  const int64_t tasks_per_request = num_heads / heads_per_task;
  // Short contexts run on the calling thread: waking the pool costs more than the work
  // (a task gets at least about 2 K token-heads of work).
  const int64_t grain = std::max<int64_t>(1, 2048 / (max_len * heads_per_task));
  at::parallel_for(0, num_requests * tasks_per_request, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(max_len), q_scaled(head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks_per_request;
      const int64_t h0 = (task % tasks_per_request) * heads_per_task;  // first query head
      const int64_t len = lens[b];
      const int64_t* table = tables + b * table_stride;
      // One head at a time, tokens inner: q and the output row stay in registers / L1. Each
      // head's arithmetic is the same sequence whatever the task split.
      for (int64_t h = h0; h < h0 + heads_per_task; ++h) {
        const int64_t kv_offset = (h / group) * head_dim;
        const float* qh = q_ptr + b * q_stride0 + h * q_stride1;
        for (int64_t d = 0; d < head_dim; ++d) q_scaled[d] = qh[d] * fscale;
        // scores[t] = scale * q_h . k_t
        for (int64_t t = 0, blk = 0; t < len; ++blk) {  // block by block: no division per token
          const float* k = k_ptr + table[blk] * block_stride + kv_offset;
          for (int64_t off = 0; off < block_size && t < len; ++off, ++t)
            scores[t] = dot(q_scaled.data(), k + off * token_stride, head_dim);
        }
        float row_max = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < len; ++t) row_max = std::max(row_max, scores[t]);
        const float inv_sum = 1.f / exp_shifted(scores.data(), len, row_max);
        float* o = out_ptr + b * o_stride0 + h * o_stride1;
        accumulate_values(o, scores.data(), len, v_ptr + kv_offset, table, block_size,
                          block_stride, token_stride, head_dim, inv_sum);
      }
    }
  });
}
"""

_FUNCTION = "paged_decode_attention"
_UNSET = object()
_kernel: object = _UNSET


def load_kernel() -> Callable[..., None] | None:
    """The compiled kernel, building it if needed (at engine load, never in a request); None
    when disabled or unbuildable.

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


def loaded_kernel() -> Callable[..., None] | None:
    """The kernel if ``load_kernel`` has loaded it in this process, else None (use torch)."""
    kernel = _kernel
    return None if kernel is _UNSET else kernel  # type: ignore[return-value]


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
