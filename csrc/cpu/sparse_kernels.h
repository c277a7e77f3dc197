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
// registers). From a few stored weights per row per ~64 panel rows on, both take W's columns in
// blocks whose panel rows stay in L1 (column_block below); blocks sized for L2 measured no
// faster (256×4096×4096, 95–99% sparse): the partial sums they write cost what the hits save.
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

// out[u] = hsum(v[u]) for eight vectors: for fp32 one tree of horizontal adds (9 instructions
// for the eight sums) instead of a chain of 7 adds per vector; the SDDMM runs one per eight
// stored weights (batch 100, 500→500 at density 0.55, 2 threads: 623–689 → 472–524 µs).
template <class A>
inline void hsum8(const vec_t<A>* v, A* out) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<A, float>) {
    __m256 t[4];
    for (int i = 0; i < 4; ++i) t[i] = _mm256_hadd_ps(v[2 * i], v[2 * i + 1]);
    const __m256 u0 = _mm256_hadd_ps(t[0], t[1]), u1 = _mm256_hadd_ps(t[2], t[3]);
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                        _mm256_permute2f128_ps(u0, u1, 0x31)));
    return;
  }
#endif
  for (int u = 0; u < 8; ++u) out[u] = hsum<A>(v[u]);
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

// out[r, s0 .. s0 + V·L) = init (Add: out's own values) + Σ_{j in [j0, j1)} values[j] ·
// dense[idx[j], s0 ...] (`dense` and `o` point at the strip's first column).
template <int V, bool Add, class A, class T>
inline void spmm_strip(int64_t j0, int64_t j1, const int32_t* idx, const T* values,
                       const A* dense, int64_t Bp, A init, A* o) {
  constexpr int L = Vec<A>::kLanes;
  vec_t<A> acc[V];
  for (int v = 0; v < V; ++v) acc[v] = Add ? load(o + v * L) : vec_t<A>{} + init;
  for (int64_t j = j0; j < j1; ++j) {
    // The rows of dense come in random order: fetch ahead (from L2; not for a later column
    // block, whose rows are in L1, see spmm_rows).
    if (!Add && j + kAhead < j1) {
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
template <int V, bool Add = false, class A, class T>
inline void spmm_vectors(int vectors, int64_t j0, int64_t j1, const int32_t* idx,
                         const T* values, const A* dense, int64_t Bp, A init, A* o) {
  if constexpr (V > 0) {
    if (vectors == V) return spmm_strip<V, Add>(j0, j1, idx, values, dense, Bp, init, o);
    spmm_vectors<V - 1, Add>(vectors, j0, j1, idx, values, dense, Bp, init, o);
  }
}

// Blocking over W's columns (the rows of the dense panel): the products take the stored weights
// of an item's rows block by block, so that the panel rows one block reads (block × width
// elements, about kBlockBytes) stay in L1 while every row of the item uses them, instead of
// coming from L2 once per stored weight. A row's partial result makes a round trip through
// memory between blocks (its strip of accumulators for the SpMM; nothing for the SDDMM, whose
// dot products end inside a block), so blocks pay from a few stored weights per row per block.
// Batch 100, 500→500, 2 threads, three alternating runs (with hsum8 below): forward + backward
// at density 0.55 1.5–1.6 → 1.1–1.45 ms, 0.4 1.17–1.26 → 0.87–0.96 ms, 0.3 0.9–1.17 →
// 0.69–0.74 ms; unchanged at 0.1 and 0.05 (one pass).
constexpr int64_t kBlockBytes = 26 * 1024;
constexpr int64_t kRowsPerItem = 64;  // rows of W (or Wᵀ) per work item: at most this many

// The column block for rows of `row_bytes` of the dense panel, or `cols` (one pass) when there
// are fewer than ~4 stored weights per row per block: W is `rows × cols` with `nnz` stored.
inline int64_t column_block(int64_t nnz, int64_t rows, int64_t cols, int64_t row_bytes) {
  const int64_t block = std::max<int64_t>(8, kBlockBytes / std::max<int64_t>(row_bytes, 1));
  return block < cols && nnz * block >= 4 * rows * cols ? block : std::max<int64_t>(cols, 1);
}

// Rows [r0, r1) of out (R × Bp, r1 - r0 ≤ kRowsPerItem), panel columns [c0, c1) (c0 and c1
// multiples of the lanes, at most kMaxStripVectors vectors apart: one strip, see strip_width):
// out = bias (or 0) + the rows' products, W's columns [0, cols) taken in blocks of `block`.
// Each row's sum runs over its stored weights in their order whatever the block (a cursor per
// row; the last block takes what is left), so the result does not depend on the blocking, and
// indices need not be sorted. bias may be nullptr.
template <class A, class T>
void spmm_rows(const int64_t* offsets, const int32_t* idx, const T* values, const T* bias,
               const A* dense, int64_t Bp, A* out, int64_t r0, int64_t r1, int64_t c0,
               int64_t c1, int64_t cols, int64_t block) {
  const int vectors = static_cast<int>((c1 - c0) / Vec<A>::kLanes);
  int64_t cursor[kRowsPerItem];
  for (int64_t r = r0; r < r1; ++r) cursor[r - r0] = offsets[r];
  for (int64_t end = block;; end += block) {
    const bool first = end == block, last = end >= cols;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t j0 = cursor[r - r0], j1 = offsets[r + 1];
      int64_t j = last ? j1 : j0;
      while (j < j1 && idx[j] < end) ++j;
      A* o = out + r * Bp + c0;
      if (first) {
        const A init = bias ? static_cast<A>(bias[r]) : A(0);
        spmm_vectors<kMaxStripVectors>(vectors, j0, j, idx, values, dense + c0, Bp, init, o);
      } else if (j > j0) {
        spmm_vectors<kMaxStripVectors, true>(vectors, j0, j, idx, values, dense + c0, Bp, A(0),
                                             o);
      }
      cursor[r - r0] = j;
    }
    if (last) break;
  }
}

// grad_values[j] = <dyᵀ[n, :], xᵀ[cols[j], :]> for the stored weights of rows [n0, n1)
// (n1 - n0 ≤ kRowsPerItem), W's columns [0, cols) in blocks of `block` as for spmm_rows: eight
// stored weights at a time, so that each dyᵀ load serves eight FMAs (a group starts in the
// block and may reach past it), a row's last < 8 one by one.
template <class A, class T>
void sddmm_rows(const int64_t* offsets, const int32_t* idx, const A* dyT, const A* xT,
                int64_t Bp, T* grad_values, int64_t n0, int64_t n1, int64_t cols,
                int64_t block) {
  constexpr int G = 8, L = Vec<A>::kLanes;
  int64_t cursor[kRowsPerItem];
  for (int64_t n = n0; n < n1; ++n) cursor[n - n0] = offsets[n];
  for (int64_t end = block;; end += block) {  // the last block takes all: indices < cols
    for (int64_t n = n0; n < n1; ++n) {
      const A* g = dyT + n * Bp;
      int64_t j = cursor[n - n0];
      const int64_t j1 = offsets[n + 1];
      for (; j + G <= j1 && idx[j] < end; j += G) {
        const A* x[G];
        vec_t<A> acc[G];
        for (int u = 0; u < G; ++u) {
          x[u] = xT + idx[j + u] * Bp;
          acc[u] = vec_t<A>{};
        }
        for (int64_t i = 0; i < Bp; i += L) {
          const vec_t<A> gv = load(g + i);
          for (int u = 0; u < G; ++u) acc[u] += gv * load(x[u] + i);
        }
        A sums[G];
        hsum8<A>(acc, sums);
        for (int u = 0; u < G; ++u) grad_values[j + u] = static_cast<T>(sums[u]);
      }
      if (j < j1 && idx[j] < end) {  // fewer than G left (the loop stopped inside the block)
        for (; j < j1; ++j) {
          const A* x = xT + idx[j] * Bp;
          vec_t<A> acc{};
          for (int64_t i = 0; i < Bp; i += L) acc += load(g + i) * load(x + i);
          grad_values[j] = static_cast<T>(hsum<A>(acc));
        }
      }
      cursor[n - n0] = j;
    }
    if (end >= cols) break;
  }
}

}  // namespace sparse_lottery::cpu::sparse
