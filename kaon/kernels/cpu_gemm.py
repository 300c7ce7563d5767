"""Batch-invariant float32 GEMM for small batches on AVX2 CPUs, on weights packed at load.

``y [M, N] = x [M, K] @ W`` (+ bias [N]), with ``W`` given as the ``[K, N]`` (``[in, out]``)
float32 weight that ``kaon.layers.linear`` stores, packed once into column panels of 16 floats:

    W [K, N]  ->  packed [num_panels, K, 16],  num_panels = ceil(N / 16), last panel zero-padded

    panel p holds W[:, 16p : 16p + 16] row after row, so a panel is one contiguous stream of
    K * 64 bytes (one cache line per k) that the hardware prefetcher follows.

Why: on the AMD EPYC (Zen 3) machines, torch's float32 ``mm`` goes to MKL, which reads the
weight at well under the memory bandwidth for 1-32 rows (see BENCHMARKS.md, issue 12); a decode
step is nothing but such products.

Batch invariance: every output ``y[m, n]`` is ``bias[n] + (((0 + x[m,0] W[0,n]) + x[m,1] W[1,n])
+ ...)``, one fused multiply-add per k in increasing k, whatever the number of rows, the register
tile a row falls in, or the thread that computes it (threads split the panels, never K). So a
row's result is bit-identical at M = 1 and M = 64, and equal between decode and prefill.

Register tiles: MR rows x NP panels (MR * NP * 2 AVX2 accumulators, at most 12): 1 x 4, 2 x 3,
3 x 2, 4..6 x 1. Larger M runs in tiles of 6 rows over blocks of panels that stay in L2.

The torch product (``torch.mm``) is the reference and the fallback: CUDA, other dtypes, no AVX2,
a failed build, or ``KAON_DISABLE_CPP_OPS=1``.
"""

from __future__ import annotations

from types import ModuleType

from kaon import envs
from kaon.kernels.cpp_build import arch_flags, load_cpp_module

PANEL_WIDTH = 16  # output columns per packed panel (two AVX2 registers of 8 floats)

_CPP_SOURCE = r"""
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstring>

namespace {

constexpr int64_t kPanel = 16;
// Bytes of weight panels a block of row tiles reuses from L2 (Zen 3: 512 KiB per core).
constexpr int64_t kBlockBytes = 192 * 1024;

// y[0:MR, 0:NP*16] (+ bias) for MR rows of x (row stride ldx) and NP consecutive panels.
// ``valid`` columns of the NP*16 are stored (the last panel may be padding).
template <int MR, int NP>
inline void tile(const float* x, int64_t ldx, const float* panels, int64_t K, float* y,
                 int64_t ldy, int64_t valid, const float* bias) {
  // Plain locals indexed by constants only, so that they live in registers. Blocked summation:
  // ``acc`` sums kChunk steps of k, then is added to ``sum``, so rounding error grows with
  // K / kChunk + kChunk rather than with K (one FMA chain over K = 2048 put Gemma 3's float32
  // logits 1.5e-3 from transformers'). The order is fixed: the same for every M and thread.
  constexpr int64_t kChunk = 32;
  __m256 acc[MR * NP * 2], sum[MR * NP * 2];
#pragma GCC unroll 16
  for (int i = 0; i < MR * NP * 2; ++i) sum[i] = _mm256_setzero_ps();
  const int64_t panel_floats = K * kPanel;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
#pragma GCC unroll 16
  for (int i = 0; i < MR * NP * 2; ++i) acc[i] = _mm256_setzero_ps();
  const int64_t k1 = std::min<int64_t>(K, k0 + kChunk);
  for (int64_t k = k0; k < k1; ++k) {
    const float* w = panels + k * kPanel;
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 a = _mm256_broadcast_ss(x + m * ldx + k);
#pragma GCC unroll 8
      for (int p = 0; p < NP; ++p) {
        const float* wp = w + p * panel_floats;
        acc[(m * NP + p) * 2] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wp), acc[(m * NP + p) * 2]);
        acc[(m * NP + p) * 2 + 1] =
            _mm256_fmadd_ps(a, _mm256_loadu_ps(wp + 8), acc[(m * NP + p) * 2 + 1]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR * NP * 2; ++i) sum[i] = _mm256_add_ps(sum[i], acc[i]);
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      const int64_t col = p * kPanel;
      __m256 lo = sum[(m * NP + p) * 2], hi = sum[(m * NP + p) * 2 + 1];
      if (bias != nullptr) {  // bias columns are padded like the panels (see linear())
        lo = _mm256_add_ps(lo, _mm256_loadu_ps(bias + col));
        hi = _mm256_add_ps(hi, _mm256_loadu_ps(bias + col + 8));
      }
      float* dst = y + m * ldy + col;
      if (valid - col >= kPanel) {
        _mm256_storeu_ps(dst, lo);
        _mm256_storeu_ps(dst + 8, hi);
      } else if (valid > col) {
        alignas(32) float out[kPanel];
        _mm256_store_ps(out, lo);
        _mm256_store_ps(out + 8, hi);
        std::memcpy(dst, out, (valid - col) * sizeof(float));
      }
    }
  }
}

// Rows [0, MR) of x against panels [p_begin, p_end): NP panels at a time, then one at a time.
template <int MR, int NP>
void row_tile(const float* x, int64_t K, const float* packed, int64_t p_begin, int64_t p_end,
              float* y, int64_t N, const float* bias) {
  const int64_t panel_floats = K * kPanel;
  int64_t p = p_begin;
  for (; p + NP <= p_end; p += NP)
    tile<MR, NP>(x, K, packed + p * panel_floats, K, y + p * kPanel, N,
                 std::min<int64_t>(NP * kPanel, N - p * kPanel),
                 bias == nullptr ? nullptr : bias + p * kPanel);
  for (; p < p_end; ++p)
    tile<MR, 1>(x, K, packed + p * panel_floats, K, y + p * kPanel, N,
                std::min<int64_t>(kPanel, N - p * kPanel),
                bias == nullptr ? nullptr : bias + p * kPanel);
}

void rows(int64_t count, const float* x, int64_t K, const float* packed, int64_t p_begin,
          int64_t p_end, float* y, int64_t N, const float* bias) {
  switch (count) {
    case 1: return row_tile<1, 4>(x, K, packed, p_begin, p_end, y, N, bias);
    case 2: return row_tile<2, 3>(x, K, packed, p_begin, p_end, y, N, bias);
    case 3: return row_tile<3, 2>(x, K, packed, p_begin, p_end, y, N, bias);
    case 4: return row_tile<4, 1>(x, K, packed, p_begin, p_end, y, N, bias);
    case 5: return row_tile<5, 1>(x, K, packed, p_begin, p_end, y, N, bias);
    default: return row_tile<6, 1>(x, K, packed, p_begin, p_end, y, N, bias);
  }
}

}  // namespace

torch::Tensor pack_weight(torch::Tensor weight_t) {
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.scalar_type() == torch::kFloat32,
              "pack_weight: weight_t must be a 2-D float32 tensor [in, out]");
  auto w = weight_t.contiguous();
  const int64_t K = w.size(0), N = w.size(1), P = (N + kPanel - 1) / kPanel;
  auto packed = torch::zeros({P, K, kPanel}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t width = std::min<int64_t>(kPanel, N - p * kPanel);
      for (int64_t k = 0; k < K; ++k)
        std::memcpy(dst + (p * K + k) * kPanel, src + k * N + p * kPanel, width * sizeof(float));
    }
  });
  return packed;
}

torch::Tensor linear(torch::Tensor x, torch::Tensor packed, int64_t N,
                     c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "linear: x must be a contiguous float32 [M, K] tensor");
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  TORCH_CHECK(packed.size(1) == K && packed.size(2) == kPanel, "linear: K mismatch");
  TORCH_CHECK(N > (P - 1) * kPanel && N <= P * kPanel, "linear: N does not match the panels");
  const float* bias_p = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == P * kPanel && bias->is_contiguous(),
                "linear: bias must be padded to the panels");
    bias_p = bias->data_ptr<float>();
  }
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Small M: every row against all of a thread's panels (the weight is read once).
  // Larger M: blocks of panels that stay in L2 while tiles of 6 rows pass over them.
  const int64_t block = M <= 6 ? P : std::max<int64_t>(1, kBlockBytes / (K * kPanel * 4));
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += block) {
      const int64_t b_end = std::min(end, b + block);
      for (int64_t m = 0; m < M; m += 6)
        rows(std::min<int64_t>(6, M - m), xp + m * K, K, wp, b, b_end, yp + m * N, N, bias_p);
    }
  });
  return y;
}
"""

_FUNCTIONS = ["pack_weight", "linear"]

_UNSET = object()
_ops: object = _UNSET


def load_ops() -> ModuleType | None:
    """The compiled module (``pack_weight``, ``linear``), or None when disabled, when the CPU
    has no AVX2 + FMA, or when it cannot be built. Decided once per process, at engine load."""
    global _ops
    if _ops is _UNSET:
        usable = not envs.disable_cpp_ops() and arch_flags()[0] == "avx2"
        _ops = load_cpp_module("kaon_cpu_gemm", _CPP_SOURCE, _FUNCTIONS) if usable else None
    return _ops  # type: ignore[return-value]


def loaded_ops() -> ModuleType | None:
    """The module if ``load_ops`` has loaded it; never compiles (None before engine load)."""
    return None if _ops is _UNSET else _ops  # type: ignore[return-value]
