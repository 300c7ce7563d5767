// GEMM on GGUF block-quantized weights: y[M, N] = x[M, K] @ W^T, W kept in its file layout.
// Layouts: llama.cpp ggml-common.h (see kaon/kernels/gguf_matmul.py). Activations are quantized per
// row to 8 bits: 32-blocks {float d, int8 q[32], float s = d * sum q} for Q4_0..Q8_0, 256-blocks
// {float d, int8 q[256], int16 sums of 16} for the K-quants; the dot products are integer
// (maddubs/madd) per block, scaled and summed in float in a fixed order per output element, so a
// row's result does not depend on M or on how N is split across threads (batch invariance).
#if defined(__AVX2__)
#pragma GCC target("f16c")
#include <immintrin.h>
#endif
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace {

enum Type : int64_t { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

struct Layout { int64_t block, bytes; };

constexpr int64_t bytes_of(int64_t type) {
  return type == Q4_0 ? 18 : type == Q4_1 ? 20 : type == Q5_0 ? 22 : type == Q5_1 ? 24
       : type == Q8_0 ? 34 : type == Q4_K ? 144 : type == Q5_K ? 176 : 210;
}

Layout layout_of(int64_t type) {
  switch (type) {
    case Q4_0: return {32, 18};
    case Q4_1: return {32, 20};
    case Q5_0: return {32, 22};
    case Q5_1: return {32, 24};
    case Q8_0: return {32, 34};
    case Q4_K: return {256, 144};
    case Q5_K: return {256, 176};
    case Q6_K: return {256, 210};
  }
  TORCH_CHECK(false, "GGUF type id ", type, " has no kernel");
}

inline float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__AVX2__)
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}

// Per-row 8-bit activations. 32-blocks: d, s per block; 256-blocks: d per block, sums per 16.
struct Acts {
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<int16_t> sums;
  int64_t k, block;
  const int8_t* qrow(int64_t m) const { return q.data() + m * k; }
  const float* drow(int64_t m) const { return d.data() + m * (k / block); }
  const float* srow(int64_t m) const { return s.data() + m * (k / block); }
  const int16_t* sumrow(int64_t m) const { return sums.data() + m * (k / 16); }
};

// Round to nearest even (the default FP environment), the same in every path.
Acts quantize_acts(const float* x, int64_t rows, int64_t k, int64_t ldx, int64_t block) {
  Acts a;
  a.k = k;
  a.block = block;
  const int64_t nb = k / block;
  a.q.resize(rows * k);
  a.d.resize(rows * nb);
  if (block == 32) a.s.resize(rows * nb); else a.sums.resize(rows * (k / 16));
  for (int64_t m = 0; m < rows; ++m) {
    const float* xr = x + m * ldx;
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = xr + b * block;
      float amax = 0.f;
      for (int64_t i = 0; i < block; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.f;
      const float id = d != 0.f ? 1.f / d : 0.f;
      int8_t* q = a.q.data() + m * k + b * block;
      int32_t total = 0;
      for (int64_t i = 0; i < block; ++i) {
        q[i] = static_cast<int8_t>(std::nearbyint(xb[i] * id));
        total += q[i];
      }
      a.d[m * nb + b] = d;
      if (block == 32) {
        a.s[m * nb + b] = d * static_cast<float>(total);
      } else {
        for (int64_t g = 0; g < block / 16; ++g) {
          int32_t sum = 0;
          for (int64_t i = 0; i < 16; ++i) sum += q[g * 16 + i];
          a.sums[m * (k / 16) + b * (block / 16) + g] = static_cast<int16_t>(sum);
        }
      }
    }
  }
  return a;
}

// ---- block decoding (scalar): unsigned codes e[] and the float value of code e ----

inline void k4_scale_min(int j, const uint8_t* s, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Codes of one block: e[i] in [0, 2^bits) (Q8_0: the signed int8 as is).
void unpack_codes(int64_t type, const uint8_t* b, int* e) {
  switch (type) {
    case Q4_0: case Q4_1: case Q5_0: case Q5_1: {
      const int off = (type == Q4_0) ? 2 : (type == Q4_1) ? 4 : (type == Q5_0) ? 6 : 8;
      const uint8_t* qs = b + off;
      uint32_t qh = 0;
      if (type == Q5_0 || type == Q5_1) std::memcpy(&qh, b + off - 4, 4);
      for (int j = 0; j < 16; ++j) {
        e[j] = qs[j] & 0xF;
        e[j + 16] = qs[j] >> 4;
      }
      if (type == Q5_0 || type == Q5_1)
        for (int j = 0; j < 32; ++j) e[j] |= ((qh >> j) & 1) << 4;
      return;
    }
    case Q8_0:
      for (int j = 0; j < 32; ++j) e[j] = static_cast<int8_t>(b[2 + j]);
      return;
    case Q4_K: case Q5_K: {
      const uint8_t* qh = b + 16;
      const uint8_t* qs = b + (type == Q4_K ? 16 : 48);
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l) {
          int lo = qs[32 * j + l] & 0xF, hi = qs[32 * j + l] >> 4;
          if (type == Q5_K) {
            lo |= ((qh[l] >> (2 * j)) & 1) << 4;
            hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
          }
          e[64 * j + l] = lo;
          e[64 * j + 32 + l] = hi;
        }
      return;
    }
    case Q6_K: {
      for (int n = 0; n < 2; ++n) {
        const uint8_t* ql = b + 64 * n;
        const uint8_t* qh = b + 128 + 32 * n;
        int* y = e + 128 * n;
        for (int l = 0; l < 32; ++l) {
          y[l] = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
          y[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
          y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
          y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
      }
      return;
    }
  }
}

void dequantize_block(int64_t type, const uint8_t* b, float* out) {
  int e[256];
  unpack_codes(type, b, e);
  switch (type) {
    case Q4_0: case Q5_0: {
      const float d = h2f(b);
      const int zero = type == Q4_0 ? 8 : 16;
      for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(e[j] - zero);
      return;
    }
    case Q4_1: case Q5_1: {
      const float d = h2f(b), m = h2f(b + 2);
      for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(e[j]) + m;
      return;
    }
    case Q8_0: {
      const float d = h2f(b);
      for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(e[j]);
      return;
    }
    case Q4_K: case Q5_K: {
      const float d = h2f(b), dmin = h2f(b + 2);
      for (int s = 0; s < 8; ++s) {
        int sc, mn;
        k4_scale_min(s, b + 4, &sc, &mn);
        const float scale = d * sc, low = dmin * mn;
        for (int l = 0; l < 32; ++l) out[32 * s + l] = scale * e[32 * s + l] - low;
      }
      return;
    }
    case Q6_K: {
      const float d = h2f(b + 208);
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      for (int g = 0; g < 16; ++g)
        for (int l = 0; l < 16; ++l) out[16 * g + l] = d * sc[g] * (e[16 * g + l] - 32);
      return;
    }
  }
}

// ---- scalar dot products: one weight row against one activation row ----

float dot_scalar(int64_t type, const uint8_t* w, int64_t nb, const Acts& a, int64_t m) {
  const Layout lay = layout_of(type);
  const int8_t* xq = a.qrow(m);
  const float* xd = a.drow(m);
  float sum = 0.f;
  int e[256];
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = w + i * lay.bytes;
    const int8_t* y = xq + i * lay.block;
    unpack_codes(type, b, e);
    if (lay.block == 32) {
      int32_t isum = 0;
      for (int j = 0; j < 32; ++j) isum += e[j] * y[j];
      const float d = h2f(b);
      float m_w = 0.f;
      if (type == Q4_0) m_w = -8.f * d;
      if (type == Q5_0) m_w = -16.f * d;
      if (type == Q4_1 || type == Q5_1) m_w = h2f(b + 2);
      sum += d * xd[i] * static_cast<float>(isum) + m_w * a.srow(m)[i];
      continue;
    }
    const int16_t* bs = a.sumrow(m) + i * 16;
    if (type == Q6_K) {
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      int32_t isum = 0, corr = 0;
      for (int g = 0; g < 16; ++g) {
        int32_t part = 0;
        for (int l = 0; l < 16; ++l) part += e[16 * g + l] * y[16 * g + l];
        isum += sc[g] * part;
        corr += sc[g] * bs[g];
      }
      sum += h2f(b + 208) * xd[i] * static_cast<float>(isum - 32 * corr);
      continue;
    }
    int32_t isum = 0, msum = 0;
    for (int s = 0; s < 8; ++s) {
      int sc, mn;
      k4_scale_min(s, b + 4, &sc, &mn);
      int32_t part = 0;
      for (int l = 0; l < 32; ++l) part += e[32 * s + l] * y[32 * s + l];
      isum += sc * part;
      msum += mn * (bs[2 * s] + bs[2 * s + 1]);
    }
    sum += h2f(b) * xd[i] * static_cast<float>(isum) - h2f(b + 2) * xd[i] * static_cast<float>(msum);
  }
  return sum;
}

#if defined(__AVX2__)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Byte j of the result is 0xFF when bit j of x is set.
inline __m256i bits_to_bytes(uint32_t x) {
  const __m256i shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                            0x0101010101010101, 0x0000000000000000);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(x)), shuffle);
  bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

// 32 nibbles of qs[16]: bytes 0..15 = low nibbles, 16..31 = high nibbles.
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// A tile of RM activation rows (m0 ..) x RN weight rows (w, w + row_bytes, ..) of a 32-block
// type; out[r * ldo + c]. Each output element's operations are the same at every (RM, RN): one
// fmadd per block into its own accumulator in block order, then hsum, then the scalar min term
// summed in block order (fma), so a row's result does not depend on M or the tiling. Weight
// blocks are unpacked once per tile and each activation block is loaded once per tile: RN > 1
// gives a GEMV independent accumulator chains, RM > 1 reuses the unpacked weights across rows.
template <int64_t type, int RM, int RN>
void tile32_avx2(const uint8_t* w, int64_t row_bytes, int64_t nb, const Acts& a, int64_t m0,
                 float* out, int64_t ldo) {
  constexpr int64_t bytes = bytes_of(type);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[RM][RN];
  float extra[RM][RN];
  const int8_t* yq[RM];
  const float* yd[RM];
  const float* ys[RM];
  _Pragma("GCC unroll 8")
  for (int r = 0; r < RM; ++r) {
    yq[r] = a.qrow(m0 + r);
    yd[r] = a.drow(m0 + r);
    ys[r] = type == Q8_0 ? nullptr : a.srow(m0 + r);
    _Pragma("GCC unroll 8")
    for (int c = 0; c < RN; ++c) {
      acc[r][c] = _mm256_setzero_ps();
      extra[r][c] = 0.f;
    }
  }
  for (int64_t i = 0; i < nb; ++i) {
    __m256i u[RN], wabs[RN];
    __m256 dw[RN];
    float mw[RN];
    _Pragma("GCC unroll 8")
    for (int c = 0; c < RN; ++c) {
      const uint8_t* b = w + c * row_bytes + i * bytes;
      const float d = h2f(b);
      dw[c] = _mm256_set1_ps(d);
      if constexpr (type == Q8_0) {
        u[c] = load256(b + 2);
        wabs[c] = _mm256_sign_epi8(u[c], u[c]);
        mw[c] = 0.f;
      } else if constexpr (type == Q4_0) {
        u[c] = nibbles32(b + 2);
        mw[c] = -8.f * d;
      } else if constexpr (type == Q4_1) {
        u[c] = nibbles32(b + 4);
        mw[c] = h2f(b + 2);
      } else {
        const int off = type == Q5_0 ? 2 : 4;
        uint32_t qh;
        std::memcpy(&qh, b + off, 4);
        u[c] = _mm256_or_si256(nibbles32(b + off + 4),
                               _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
        mw[c] = type == Q5_0 ? -16.f * d : h2f(b + 2);
      }
    }
    _Pragma("GCC unroll 8")
    for (int r = 0; r < RM; ++r) {
      const __m256i y = load256(yq[r] + i * 32);
      const __m256 dx = _mm256_broadcast_ss(yd[r] + i);
      _Pragma("GCC unroll 8")
      for (int c = 0; c < RN; ++c) {
        __m256i p;
        if constexpr (type == Q8_0)
          p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[c], _mm256_sign_epi8(y, u[c])), ones);
        else
          p = _mm256_madd_epi16(_mm256_maddubs_epi16(u[c], y), ones);
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[c], dx), acc[r][c]);
      }
      if constexpr (type != Q8_0) {
        const float s = ys[r][i];
        _Pragma("GCC unroll 8")
        for (int c = 0; c < RN; ++c) extra[r][c] = std::fma(mw[c], s, extra[r][c]);
      }
    }
  }
  _Pragma("GCC unroll 8")
  for (int r = 0; r < RM; ++r)
    _Pragma("GCC unroll 8")
    for (int c = 0; c < RN; ++c) out[r * ldo + c] = hsum(acc[r][c]) + extra[r][c];
}

// Columns [j0, j1) x all rows of a 32-block type: column groups of RN, rows in tiles of RM.
template <int64_t type, int RN, int RM>
void columns32_avx2(const uint8_t* wp, int64_t row_bytes, int64_t nb, const Acts& a, int64_t rows,
                    int64_t j0, float* op, int64_t ldo) {
  const uint8_t* w = wp + j0 * row_bytes;
  int64_t m = 0;
  for (; m + RM <= rows; m += RM) tile32_avx2<type, RM, RN>(w, row_bytes, nb, a, m, op + m * ldo + j0, ldo);
  for (; m < rows; ++m) tile32_avx2<type, 1, RN>(w, row_bytes, nb, a, m, op + m * ldo + j0, ldo);
}

// A decode GEMV (one row) takes 4 weight rows per tile: four independent accumulator chains
// that share each activation load (1.2-1.3x over one weight row at a time on a 2-core EPYC).
// Several rows take 4 rows x 1 weight row: wider tiles measured no faster there (the per-block
// maddubs / madd / cvt / mul / fmadd are the limit, and 16 ymm registers hold no more
// accumulators).
template <int64_t type>
void mm32_avx2(const uint8_t* wp, int64_t row_bytes, int64_t nb, const Acts& a, int64_t rows,
               int64_t j_begin, int64_t j_end, float* op, int64_t ldo) {
  int64_t j = j_begin;
  if (rows == 1)
    for (; j + 4 <= j_end; j += 4) columns32_avx2<type, 4, 1>(wp, row_bytes, nb, a, rows, j, op, ldo);
  for (; j < j_end; ++j) columns32_avx2<type, 1, 4>(wp, row_bytes, nb, a, rows, j, op, ldo);
}

using Mm32Fn = void (*)(const uint8_t*, int64_t, int64_t, const Acts&, int64_t, int64_t, int64_t,
                        float*, int64_t);

Mm32Fn mm32_kernel(int64_t type) {
  switch (type) {
    case Q4_0: return &mm32_avx2<Q4_0>;
    case Q4_1: return &mm32_avx2<Q4_1>;
    case Q5_0: return &mm32_avx2<Q5_0>;
    case Q5_1: return &mm32_avx2<Q5_1>;
    case Q8_0: return &mm32_avx2<Q8_0>;
  }
  return nullptr;
}

// R activation rows against one weight row of Q4_K / Q5_K / Q6_K (256-blocks).
template <int64_t type, int R>
void dotk_avx2(const uint8_t* w, int64_t nb, const Acts& a, int64_t m0, float* out) {
  constexpr Layout lay{256, bytes_of(type)};
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc[R];
  float extra[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    extra[r] = 0.f;
  }
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* b = w + i * lay.bytes;
    __m256i isum[R];
    for (int r = 0; r < R; ++r) isum[r] = _mm256_setzero_si256();
    if constexpr (type == Q6_K) {
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      for (int n = 0; n < 2; ++n) {
        const __m256i qa = load256(b + 64 * n), qb = load256(b + 64 * n + 32);
        const __m256i h = load256(b + 128 + 32 * n);
        const __m256i three = _mm256_set1_epi8(3);
        __m256i v[4];
        v[0] = _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_slli_epi16(_mm256_and_si256(h, three), 4));
        v[1] = _mm256_or_si256(_mm256_and_si256(qb, m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), three), 4));
        v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), three), 4));
        v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), three), 4));
        for (int k = 0; k < 4; ++k) {
          const int g = 8 * n + 2 * k;
          const __m256i scale = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
          for (int r = 0; r < R; ++r) {
            const __m256i y = load256(a.qrow(m0 + r) + i * 256 + 128 * n + 32 * k);
            isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(v[k], y), scale));
          }
        }
      }
      const float d = h2f(b + 208);
      for (int r = 0; r < R; ++r) {
        const int16_t* bs = a.sumrow(m0 + r) + i * 16;
        int32_t corr = 0;
        for (int g = 0; g < 16; ++g) corr += sc[g] * bs[g];
        const float dx = d * a.drow(m0 + r)[i];
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(dx), acc[r]);
        extra[r] -= dx * static_cast<float>(32 * corr);
      }
      continue;
    }
    int sc[8], mn[8];
    for (int s = 0; s < 8; ++s) k4_scale_min(s, b + 4, &sc[s], &mn[s]);
    const uint8_t* qs = b + (type == Q4_K ? 16 : 48);
    const __m256i hbits = type == Q5_K ? load256(b + 16) : _mm256_setzero_si256();
    const __m256i one = _mm256_set1_epi8(1);
    for (int j = 0; j < 4; ++j) {
      const __m256i q = load256(qs + 32 * j);
      __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      if constexpr (type == Q5_K) {
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), one), 4));
      }
      const __m256i sc_lo = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * j]));
      const __m256i sc_hi = _mm256_set1_epi16(static_cast<int16_t>(sc[2 * j + 1]));
      for (int r = 0; r < R; ++r) {
        const int8_t* y = a.qrow(m0 + r) + i * 256 + 64 * j;
        const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(y)), sc_lo);
        const __m256i p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(y + 32)), sc_hi);
        isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(p_lo, p_hi));
      }
    }
    const float d = h2f(b), dmin = h2f(b + 2);
    for (int r = 0; r < R; ++r) {
      const int16_t* bs = a.sumrow(m0 + r) + i * 16;
      int32_t msum = 0;
      for (int s = 0; s < 8; ++s) msum += mn[s] * (bs[2 * s] + bs[2 * s + 1]);
      const float xd = a.drow(m0 + r)[i];
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_set1_ps(d * xd), acc[r]);
      extra[r] -= dmin * xd * static_cast<float>(msum);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]) + extra[r];
}

using DotFn = void (*)(const uint8_t*, int64_t, const Acts&, int64_t, float*);

// (4-row, 1-row) kernels of a K-quant type (the 32-block types take ``mm32_avx2``).
template <int64_t type>
std::pair<DotFn, DotFn> kernels_of() {
  return {&dotk_avx2<type, 4>, &dotk_avx2<type, 1>};
}

std::pair<DotFn, DotFn> avx2_kernels(int64_t type) {
  switch (type) {
    case Q4_K: return kernels_of<Q4_K>();
    case Q5_K: return kernels_of<Q5_K>();
    case Q6_K: return kernels_of<Q6_K>();
  }
  TORCH_CHECK(false, "GGUF type id ", type, " has no K-quant kernel");
}

#endif  // __AVX2__

void check_weight(const torch::Tensor& w, int64_t type, int64_t k) {
  TORCH_CHECK(w.dtype() == torch::kUInt8 && w.dim() == 2 && w.is_contiguous(),
              "GGUF blocks must be a contiguous uint8 [N, row_bytes] tensor");
  const Layout lay = layout_of(type);
  TORCH_CHECK(k % lay.block == 0, "in_features ", k, " is not a multiple of the block size ", lay.block);
  TORCH_CHECK(w.size(1) == k / lay.block * lay.bytes, "GGUF row of ", w.size(1),
              " bytes does not hold ", k, " weights of this type");
}

}  // namespace

bool gguf_has_avx2() {
#if defined(__AVX2__)
  return true;
#else
  return false;
#endif
}

// out[:, :N] = x @ dequantize(w)^T; out may be a column slice (row stride out.stride(0)).
void gguf_mm_out(torch::Tensor x, torch::Tensor w, int64_t type, torch::Tensor out, bool use_simd) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.dim() == 2 && x.stride(1) == 1, "x must be float32 [M, K]");
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.dim() == 2 && out.stride(1) == 1, "out must be float32 [M, N]");
  const int64_t rows = x.size(0), k = x.size(1), n = w.size(0);
  check_weight(w, type, k);
  TORCH_CHECK(out.size(0) == rows && out.size(1) == n, "out must be [M, N]");
  const Layout lay = layout_of(type);
  const int64_t nb = k / lay.block;
  const Acts acts = quantize_acts(x.data_ptr<float>(), rows, k, x.stride(0), lay.block);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  const int64_t ldo = out.stride(0);
  const int64_t row_bytes = w.size(1);
  // About 64 KiB of weights x rows per task, so a decode GEMV of a few hundred KiB (SmolLM2's
  // 576 x 1536 Q4_1: 540 KiB) runs on every core: 41.9 -> 54.1 tok/s single-stream on a quiet
  // 2-core EPYC vs 1 MiB per task (16 KiB: 49.7). Threads split output columns only, so a row's
  // result does not depend on the split.
  const int64_t grain = std::max<int64_t>(
      1, (int64_t{1} << 16) / std::max<int64_t>(1, row_bytes * std::min<int64_t>(rows, 8)));
#if defined(__AVX2__)
  const bool simd = use_simd;
#else
  const bool simd = false;
  (void)use_simd;
#endif
#if defined(__AVX2__)
  const Mm32Fn mm32 = simd ? mm32_kernel(type) : nullptr;
  if (mm32 != nullptr) {
    // Tasks of whole 4-column groups (the tile width), so the split never changes the tiling.
    const int64_t groups = (n + 3) / 4;
    at::parallel_for(0, groups, std::max<int64_t>(1, grain / 4), [&](int64_t begin, int64_t end) {
      mm32(wp, row_bytes, nb, acts, rows, 4 * begin, std::min(n, 4 * end), op, ldo);
    });
    return;
  }
  // Here with SIMD only for the K-quants.
  const std::pair<DotFn, DotFn> dots =
      simd ? avx2_kernels(type) : std::pair<DotFn, DotFn>{nullptr, nullptr};
#endif
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const uint8_t* wr = wp + j * row_bytes;
      int64_t m = 0;
      if (simd) {
#if defined(__AVX2__)
        float res[4];
        for (; m + 4 <= rows; m += 4) {
          dots.first(wr, nb, acts, m, res);
          for (int r = 0; r < 4; ++r) op[(m + r) * ldo + j] = res[r];
        }
        for (; m < rows; ++m) {
          dots.second(wr, nb, acts, m, res);
          op[m * ldo + j] = res[0];
        }
#endif
      }
      for (; m < rows; ++m) op[m * ldo + j] = dot_scalar(type, wr, nb, acts, m);
    }
  });
}

torch::Tensor gguf_mm(torch::Tensor x, torch::Tensor w, int64_t type, bool use_simd) {
  auto out = torch::empty({x.size(0), w.size(0)}, x.options());
  gguf_mm_out(x, w, type, out, use_simd);
  return out;
}

// rows[i] = dequantize(w[ids[i]]): float32 [len(ids), K] (an embedding lookup).
torch::Tensor gguf_dequantize_rows(torch::Tensor w, int64_t type, int64_t k, torch::Tensor ids) {
  check_weight(w, type, k);
  TORCH_CHECK(ids.dtype() == torch::kInt64 && ids.dim() == 1, "ids must be int64 [T]");
  auto idc = ids.contiguous();
  const int64_t count = idc.size(0), n = w.size(0), row_bytes = w.size(1);
  const Layout lay = layout_of(type);
  auto out = torch::empty({count, k}, torch::dtype(torch::kFloat32));
  const int64_t* id = idc.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    TORCH_CHECK(id[i] >= 0 && id[i] < n, "row id ", id[i], " out of range [0, ", n, ")");
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, count, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t b = 0; b < k / lay.block; ++b)
        dequantize_block(type, wp + id[i] * row_bytes + b * lay.bytes, op + i * k + b * lay.block);
  });
  return out;
}
