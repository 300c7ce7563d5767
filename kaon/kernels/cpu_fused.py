"""Fused float32 CPU kernels for the decoder layer's small element-wise stages.

At batch 1 a decode step is dispatch-bound: RMSNorm, RoPE, the KV cache write and SwiGLU's
``silu(gate) * up`` cost about a hundred ATen calls per layer (with their allocations and OpenMP
wake-ups) for a few thousand floats of work. Each kernel below does one stage in one call:

    rms_norm(x, weight, eps)                  -> y                      (Zhang & Sennrich 2019)
    add_rms_norm_(x, residual, weight, eps)   -> y;  residual += x in place, y = rms_norm(residual)
    rotary_and_cache_(qkv, positions, cos, sin, key_cache, value_cache, slot_mapping,
                      num_heads, num_kv_heads)
        rotates the q and k heads of qkv in place (RoFormer, Su et al. 2021, Hugging Face's
        "rotate half" layout) and copies the rotated k and the v of each token to its KV cache slot
    silu_and_mul(gate_up)                     -> silu(gate) * up        (SwiGLU, Shazeer 2020)

Shapes (all float32 except int64 positions / slot_mapping, all contiguous):
x, residual, y [T, hidden]; weight [hidden]; qkv [T, (num_heads + 2 * num_kv_heads) * head_dim];
cos, sin [max_position, head_dim / 2]; key_cache, value_cache [num_blocks, block_size,
num_kv_heads, head_dim]; gate_up [T, 2 * intermediate] -> [T, intermediate].

Each token row is computed alone with a fixed reduction order, so results do not depend on the
batch. Rows are split across threads only when there are enough of them (prefill); a decode batch
runs on the calling thread. The torch code in ``kaon.layers`` is the reference and the fallback
(other dtypes, CUDA, a failed build, or ``KAON_DISABLE_CPP_OPS=1``).
"""

from __future__ import annotations

from types import ModuleType

import torch

from kaon import envs
from kaon.kernels.cpp_build import load_cpp_module

_CPP_SOURCE = r"""
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>

namespace {

// Rows per parallel task: about 64k floats of work, so a decode step stays on one thread.
int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, width));
}

inline void norm_row(const float* in, const float* w, float* out, int64_t n, float eps) {
  float sum_sq = 0.f;
#pragma omp simd reduction(+ : sum_sq)
  for (int64_t i = 0; i < n; ++i) sum_sq += in[i] * in[i];
  const float inv_rms = 1.f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = (in[i] * inv_rms) * w[i];
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  const int64_t rows = x.size(0), n = x.size(1);
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) norm_row(xp + r * n, wp, op + r * n, n, (float)eps);
  });
  return out;
}

torch::Tensor add_rms_norm_(torch::Tensor x, torch::Tensor residual, torch::Tensor weight,
                            double eps) {
  const int64_t rows = x.size(0), n = x.size(1);
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* rp = residual.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* res = rp + r * n;
      const float* in = xp + r * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) res[i] = in[i] + res[i];
      norm_row(res, wp, op + r * n, n, (float)eps);
    }
  });
  return out;
}

void rotary_and_cache_(torch::Tensor qkv, torch::Tensor positions, torch::Tensor cos,
                       torch::Tensor sin, torch::Tensor key_cache, torch::Tensor value_cache,
                       torch::Tensor slot_mapping, int64_t num_heads, int64_t num_kv_heads) {
  const int64_t rows = qkv.size(0), width = qkv.size(1);
  const int64_t half = cos.size(1), head_dim = 2 * half;
  const int64_t kv_width = num_kv_heads * head_dim, q_width = num_heads * head_dim;
  float* base = qkv.data_ptr<float>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const float* cos_p = cos.data_ptr<float>();
  const float* sin_p = sin.data_ptr<float>();
  float* k_cache = key_cache.data_ptr<float>();
  float* v_cache = value_cache.data_ptr<float>();
  at::parallel_for(0, rows, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = base + r * width;
      TORCH_CHECK(pos[r] >= 0 && pos[r] < cos.size(0), "position out of the RoPE table");
      const float* c = cos_p + pos[r] * half;
      const float* s = sin_p + pos[r] * half;
      for (int64_t h = 0; h < num_heads + num_kv_heads; ++h) {
        float* x = row + h * head_dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i], x2 = x[i + half];
          x[i] = x1 * c[i] - x2 * s[i];
          x[i + half] = x2 * c[i] + x1 * s[i];
        }
      }
      const int64_t slot = slots[r];
      if (slot < 0) continue;  // padding token: nothing to cache
      std::memcpy(k_cache + slot * kv_width, row + q_width, kv_width * sizeof(float));
      std::memcpy(v_cache + slot * kv_width, row + q_width + kv_width, kv_width * sizeof(float));
    }
  });
}

torch::Tensor silu_and_mul(torch::Tensor gate_up) {
  const int64_t rows = gate_up.size(0), n = gate_up.size(1) / 2;
  auto out = torch::empty({rows, n}, gate_up.options());
  const float* in = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, row_grain(2 * n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* g = in + r * 2 * n;
      const float* u = g + n;
      float* o = op + r * n;
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    }
  });
  return out;
}
"""

_FUNCTIONS = ["rms_norm", "add_rms_norm_", "rotary_and_cache_", "silu_and_mul"]


_UNSET = object()
_ops: object = _UNSET


def load_ops() -> ModuleType | None:
    """The compiled module (functions above), or None when disabled or unbuildable.

    Decided once per process; a first build (once per install) takes about a minute, so the
    engine calls this at load time, never in a request.
    """
    global _ops
    if _ops is _UNSET:
        _ops = (
            None
            if envs.disable_cpp_ops()
            else load_cpp_module("kaon_cpu_fused_ops", _CPP_SOURCE, _FUNCTIONS)
        )
    return _ops  # type: ignore[return-value]


def ops_for(x: torch.Tensor) -> ModuleType | None:
    """The fused ops when they apply to activations like ``x`` (float32, CPU), else None.

    Called several times per decoder layer, so it stays cheap: ``is_cpu`` instead of building a
    ``torch.device``. Never compiles: before ``load_ops`` has run (at engine load) it is None.
    """
    if x.dtype != torch.float32 or not x.is_cpu:
        return None
    ops = _ops
    return None if ops is _UNSET else ops  # type: ignore[return-value]
