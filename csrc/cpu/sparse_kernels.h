// Sparse products of the CPU sparse-execution kernels (internal to csrc/cpu/).
//
// Layout choice: W (N×K) is kept as CSR (row offsets, column indices, values) plus a CSC index
// (column offsets, row indices, positions into the CSR values), both built once per mask. The
// dense operands are transposed to batch-contiguous panels (xᵀ: K×Bp, dyᵀ: N×Bp, Bp = batch
// rounded up to a vector): then every stored weight is one broadcast-multiply-add over a
// contiguous strip of the batch, with the strip's accumulators in registers — no gathers, no
// scatters, no atomics, and rows of W are independent work items. Row-major x would need a
// gather of x[b, k] per (nonzero, batch row) instead. The transposes cost O(batch × features),
// small next to the products down to ~99% sparsity.
//
//   spmm:  out[r, :] = bias[r] + Σ_{j in row r} values[j] · dense[idx[j], :]
//          forward (CSR over xᵀ -> yᵀ) and d_input (CSC over dyᵀ -> dxᵀ, the values gathered
//          in CSC order first);
//   sddmm: grad_values[j] = <dyᵀ[n, :], xᵀ[col[j], :]> for j in row n (CSR order), eight
//          stored weights at a time so that each dyᵀ load serves eight FMAs.
// A stored weight costs one FMA per loaded vector of the dense panel, so the products are bound
// by those loads (random rows of the panel): the SpMM prefetches the rows kAhead stored weights
// ahead and walks the panel strip by strip (strip_width columns: a row's accumulators stay in
// registers). Blocking W's columns so that a panel strip stays in L2 measured no faster on the
// 2-core EPYC (256×4096×4096, 95–99% sparse): the partial sums it writes cost what the hits save.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace sparse_lottery::cpu::sparse {

template <class A>
struct Vec {
  typedef A type __attribute__((vector_size(32), may_alias));
  static constexpr int kLanes = 32 / sizeof(A);
};

template <class A>
using vec_t = typename Vec<A>::type;

template <class A>
inline vec_t<A> load(const A* p) {  // p is 32-byte aligned (panels' rows are)
  return *reinterpret_cast<const vec_t<A>*>(p);
}

template <class A>
inline void store(A* p, vec_t<A> v) {
  *reinterpret_cast<vec_t<A>*>(p) = v;
}

template <class A>
inline A hsum(vec_t<A> v) {
  A s = 0;
  for (int i = 0; i < Vec<A>::kLanes; ++i) s += v[i];
  return s;
}

// Rows of the batch-contiguous panels: the batch rounded up to whole vectors.
template <class A>
inline int64_t panel_width(int64_t batch) {
  constexpr int64_t L = Vec<A>::kLanes;
  return (batch + L - 1) / L * L;
}

constexpr int64_t kTile = 32;
constexpr int64_t kAhead = 16;  // stored weights between a prefetch and its use

#if defined(__AVX2__)
// dst[c * ds + r] = src[r * ss + c] for r, c in [0, 8): eight rows in, eight columns out.
inline void transpose8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ds, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ds, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// dst[c * ds + r] = src[r * s0 + c * s1] for r in [r0, r1), c in [c0, c1): 8×8 blocks of fp32
// with unit column stride through AVX2, the rest element by element.
template <class T, class A>
inline void transpose_block(const T* src, int64_t s0, int64_t s1, A* dst, int64_t ds, int64_t r0,
                            int64_t r1, int64_t c0, int64_t c1) {
  int64_t rb = r0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
    if (s1 == 1) {
      for (; rb + 8 <= r1; rb += 8) {
        int64_t c = c0;
        for (; c + 8 <= c1; c += 8) transpose8x8(src + rb * s0 + c, s0, dst + c * ds + rb, ds);
        for (; c < c1; ++c)
          for (int64_t r = rb; r < rb + 8; ++r) dst[c * ds + r] = src[r * s0 + c];
      }
    }
  }
#endif
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = rb; r < r1; ++r) dst[c * ds + r] = static_cast<A>(src[r * s0 + c * s1]);
}

// dst (cols × Bp, acc type) <- srcᵀ, src (rows × cols) at element strides (s0, s1), for the
// columns [c0, c1); the panel's padding columns [rows, Bp) are zeroed.
template <class T, class A>
void transpose_in(const T* src, int64_t rows, int64_t s0, int64_t s1, A* dst, int64_t Bp,
                  int64_t c0, int64_t c1) {
  for (int64_t r0 = 0; r0 < rows; r0 += kTile)
    transpose_block<T, A>(src, s0, s1, dst, Bp, r0, std::min(rows, r0 + kTile), c0, c1);
  for (int64_t c = c0; c < c1; ++c) std::fill(dst + c * Bp + rows, dst + (c + 1) * Bp, A(0));
}

// dst (batch × R, contiguous, T) <- srcᵀ for the panel rows [r0, r1) of src (R × Bp).
template <class A, class T>
void transpose_out(const A* src, int64_t Bp, int64_t batch, int64_t R, T* dst, int64_t r0,
                   int64_t r1) {
  for (int64_t b0 = 0; b0 < batch; b0 += kTile)
    transpose_block<A, T>(src, Bp, 1, dst, R, r0, r1, b0, std::min(batch, b0 + kTile));
}

// Strips of the sparse convolution's grid rows (sparse_conv.cpp): 8 vectors of accumulators.
template <class A>
constexpr int64_t kStrip = 8 * Vec<A>::kLanes;

// The widest SpMM strip: its accumulators, the broadcast weight and a loaded vector fill the 16
// AVX registers.
constexpr int kMaxStripVectors = 13;

// SpMM strip width (elements) for a panel of Bp columns: the fewest strips of at most
// kMaxStripVectors vectors, of equal widths. A strip loads each stored weight's index and value
// once, so a batch of 100 (13 vectors) runs one strip instead of 8 + 5 vectors.
template <class A>
inline int64_t strip_width(int64_t Bp) {
  constexpr int64_t L = Vec<A>::kLanes;
  const int64_t vectors = std::max<int64_t>(Bp / L, 1);
  const int64_t strips = (vectors + kMaxStripVectors - 1) / kMaxStripVectors;
  return (vectors + strips - 1) / strips * L;
}

// out[r, s0 .. s0 + V·L) = init + Σ_{j in [j0, j1)} values[j] · dense[idx[j], s0 ...] (`dense`
// and `o` point at the strip's first column).
template <int V, class A, class T>
inline void spmm_strip(int64_t j0, int64_t j1, const int32_t* idx, const T* values,
                       const A* dense, int64_t Bp, A init, A* o) {
  constexpr int L = Vec<A>::kLanes;
  vec_t<A> acc[V];
  for (int v = 0; v < V; ++v) acc[v] = vec_t<A>{} + init;
  for (int64_t j = j0; j < j1; ++j) {
    if (j + kAhead < j1) {  // the rows of dense come in random order: fetch ahead
      const char* next = reinterpret_cast<const char*>(dense + idx[j + kAhead] * Bp);
      for (int line = 0; line < V * L * int(sizeof(A)); line += 64) __builtin_prefetch(next + line);
    }
    const A w = static_cast<A>(values[j]);
    const A* d = dense + idx[j] * Bp;
    for (int v = 0; v < V; ++v) acc[v] += w * load(d + v * L);
  }
  for (int v = 0; v < V; ++v) store(o + v * L, acc[v]);
}

// spmm_strip<vectors> for a run-time vectors in [1, V].
template <int V, class A, class T>
inline void spmm_vectors(int vectors, int64_t j0, int64_t j1, const int32_t* idx,
                         const T* values, const A* dense, int64_t Bp, A init, A* o) {
  if constexpr (V > 0) {
    if (vectors == V) return spmm_strip<V>(j0, j1, idx, values, dense, Bp, init, o);
    spmm_vectors<V - 1>(vectors, j0, j1, idx, values, dense, Bp, init, o);
  }
}

// Rows [r0, r1) of out (R × Bp), panel columns [c0, c1) (c0 and c1 multiples of the lanes, at
// most kMaxStripVectors vectors apart: one strip, see strip_width): out = bias (or 0) + the
// rows' products. bias may be nullptr.
template <class A, class T>
void spmm_rows(const int64_t* offsets, const int32_t* idx, const T* values, const T* bias,
               const A* dense, int64_t Bp, A* out, int64_t r0, int64_t r1, int64_t c0,
               int64_t c1) {
  const int vectors = static_cast<int>((c1 - c0) / Vec<A>::kLanes);
  for (int64_t r = r0; r < r1; ++r) {
    const A init = bias ? static_cast<A>(bias[r]) : A(0);
    spmm_vectors<kMaxStripVectors>(vectors, offsets[r], offsets[r + 1], idx, values,
                                   dense + c0, Bp, init, out + r * Bp + c0);
  }
}

// grad_values[j] = <dyᵀ[n, :], xᵀ[cols[j], :]> for the stored weights of rows [n0, n1): eight
// at a time, so that each dyᵀ load serves eight FMAs.
template <class A, class T>
void sddmm_rows(const int64_t* offsets, const int32_t* cols, const A* dyT, const A* xT,
                int64_t Bp, T* grad_values, int64_t n0, int64_t n1) {
  constexpr int G = 8, L = Vec<A>::kLanes;
  for (int64_t n = n0; n < n1; ++n) {
    const A* g = dyT + n * Bp;
    int64_t j = offsets[n];
    const int64_t j1 = offsets[n + 1];
    for (; j + G <= j1; j += G) {
      const A* x[G];
      vec_t<A> acc[G];
      for (int u = 0; u < G; ++u) {
        x[u] = xT + cols[j + u] * Bp;
        acc[u] = vec_t<A>{};
      }
      for (int64_t i = 0; i < Bp; i += L) {
        const vec_t<A> gv = load(g + i);
        for (int u = 0; u < G; ++u) acc[u] += gv * load(x[u] + i);
      }
      for (int u = 0; u < G; ++u) grad_values[j + u] = static_cast<T>(hsum<A>(acc[u]));
    }
    for (; j < j1; ++j) {
      const A* x = xT + cols[j] * Bp;
      vec_t<A> acc{};
      for (int64_t i = 0; i < Bp; i += L) acc += load(g + i) * load(x + i);
      grad_values[j] = static_cast<T>(hsum<A>(acc));
    }
  }
}

}  // namespace sparse_lottery::cpu::sparse
