// Float32 products with one narrow side (at most kMaxNarrow rows: a classifier's output layer,
// 500→10), AVX2 (internal to csrc/cpu/). MKL packs the wide operand for every call, which costs
// more than the product there: on the 2-core machine at batch 100, the masked 500→10 layer's
// forward took 52.6 µs through MKL and takes 19.4 µs here, its backward 55.8 and 33.5 µs (the
// op's calls, masking included). Both forms read their operands in place:
//   dots     out (M, N) = x (M, K) · wᵀ (+ bias), w (N, K): N dot products per row of x
//   combine  out (I, K) = C (I, J) · R (J, K):               rows of out as sums of rows of R
// Each takes up to kGroup rows of its narrow side at a time, the remainder of K through masked
// loads and stores. Rows of the output are split over the intra-op threads
// (dots) or column ranges are (combine), above kSerialWork multiply-adds.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace sparse_lottery::cpu::narrow {

constexpr int64_t kMaxNarrow = 16;          // rows of the narrow side these kernels take
constexpr int64_t kSerialWork = 1 << 18;    // multiply-adds under which one thread runs it all
constexpr int64_t kColumnsPerTask = 256;    // of combine's output, per parallel task

// Whether the (narrow × ·) product runs here: float32, AVX2, 1..kMaxNarrow narrow rows.
inline bool takes(at::ScalarType dtype, int64_t narrow_rows) {
#if defined(__AVX2__)
  return dtype == at::kFloat && narrow_rows > 0 && narrow_rows <= kMaxNarrow;
#else
  (void)dtype;
  (void)narrow_rows;
  return false;
#endif
}

#if defined(__AVX2__)
// Lanes [0, n) all-ones, for the masked loads and stores of a row's last n < 8 elements.
inline __m256i tail_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline float horizontal_sum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// out[b * ldo + n] = x[b, :] · w[n, :] for B rows b of x and G rows n of w (row stride K):
// B × G independent accumulators, every load of w shared by B rows of x.
template <int G, int B>
inline void dots_of_rows(const float* x, int64_t ldx, const float* w, int64_t K, float* out,
                         int64_t ldo) {
  __m256 acc[B][G];
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < G; ++g) acc[b][g] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    const bool whole = k + 8 <= K;
    const __m256i lanes = tail_lanes(K - k);
    __m256 xv[B];
    for (int b = 0; b < B; ++b)
      xv[b] = whole ? _mm256_loadu_ps(x + b * ldx + k) : _mm256_maskload_ps(x + b * ldx + k, lanes);
    for (int g = 0; g < G; ++g) {
      const __m256 wv = whole ? _mm256_loadu_ps(w + g * K + k) : _mm256_maskload_ps(w + g * K + k, lanes);
      for (int b = 0; b < B; ++b) acc[b][g] = _mm256_fmadd_ps(xv[b], wv, acc[b][g]);
    }
  }
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < G; ++g) out[b * ldo + g] = horizontal_sum(acc[b][g]);
}

// out[i, k0:k1] = Σ_j c[i * ci + j * cj] R[j, k0:k1] for G rows i (out row stride ldo), 16
// columns at a time: each broadcast of c serves two vectors of R.
template <int G>
inline void combine_rows(const float* c, int64_t ci, int64_t cj, const float* r, int64_t ldr,
                         int64_t J, int64_t k0, int64_t k1, float* out, int64_t ldo) {
  for (int64_t k = k0; k < k1; k += 16) {
    const bool whole = k + 16 <= k1;
    const __m256i lo = tail_lanes(k1 - k), hi = tail_lanes(k1 - k - 8);
    __m256 acc[G][2];
    for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm256_setzero_ps();
    for (int64_t j = 0; j < J; ++j) {
      const float* rj = r + j * ldr + k;
      const __m256 r0 = whole ? _mm256_loadu_ps(rj) : _mm256_maskload_ps(rj, lo);
      const __m256 r1 = whole ? _mm256_loadu_ps(rj + 8) : _mm256_maskload_ps(rj + 8, hi);
      for (int g = 0; g < G; ++g) {
        const __m256 cv = _mm256_broadcast_ss(c + g * ci + j * cj);
        acc[g][0] = _mm256_fmadd_ps(cv, r0, acc[g][0]);
        acc[g][1] = _mm256_fmadd_ps(cv, r1, acc[g][1]);
      }
    }
    for (int g = 0; g < G; ++g) {
      float* o = out + g * ldo + k;
      if (whole) {
        _mm256_storeu_ps(o, acc[g][0]);
        _mm256_storeu_ps(o + 8, acc[g][1]);
      } else {
        _mm256_maskstore_ps(o, lo, acc[g][0]);
        _mm256_maskstore_ps(o + 8, hi, acc[g][1]);
      }
    }
  }
}

// Rows of the narrow side per group: 2 × 6 accumulators (two rows of x, or two vectors of R)
// plus the operands fill the 16 AVX2 registers.
constexpr int64_t kGroup = 6;

// f.template operator()<G>() for G in 1..kGroup (fixed at compile time).
template <typename F>
inline void with_group(int64_t g, F&& f) {
  switch (g) {
    case 1: f.template operator()<1>(); break;
    case 2: f.template operator()<2>(); break;
    case 3: f.template operator()<3>(); break;
    case 4: f.template operator()<4>(); break;
    case 5: f.template operator()<5>(); break;
    default: f.template operator()<6>(); break;
  }
}

// Groups of at most kGroup covering n rows as evenly as possible (10 → 5 + 5).
inline int64_t group_size(int64_t n) {
  const int64_t groups = (n + kGroup - 1) / kGroup;
  return (n + groups - 1) / groups;
}
#endif

// out (M, N), row stride ldo = x (M, K; row stride ldx, unit column stride) · wᵀ + bias, where
// w (N, K) is contiguous and bias (N) may be null. Requires AVX2; meant for narrow N.
inline void dots(const float* x, int64_t ldx, const float* w, const float* bias, float* out,
                 int64_t ldo, int64_t M, int64_t N, int64_t K) {
#if defined(__AVX2__)
  const int64_t gs = group_size(N);
  const int64_t grain = std::max<int64_t>(1, kSerialWork / std::max<int64_t>(1, 2 * N * K));
  at::parallel_for(0, (M + 1) / 2, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t b = 2 * p0; b < std::min(M, 2 * p1); b += 2) {  // pairs of rows of x
      float* o = out + b * ldo;
      for (int64_t n0 = 0; n0 < N; n0 += gs) {
        with_group(std::min(gs, N - n0), [&]<int G>() {
          if (b + 1 < M) {
            dots_of_rows<G, 2>(x + b * ldx, ldx, w + n0 * K, K, o + n0, ldo);
          } else {
            dots_of_rows<G, 1>(x + b * ldx, ldx, w + n0 * K, K, o + n0, ldo);
          }
        });
      }
      if (bias != nullptr) {
        for (int64_t r = b; r < std::min(M, b + 2); ++r)
          for (int64_t n = 0; n < N; ++n) out[r * ldo + n] += bias[n];
      }
    }
  });
#else
  TORCH_CHECK(false, "narrow::dots needs AVX2");
#endif
}

// out (I, K), row stride ldo = C (I, J) · R (J, K), C's element (i, j) at c[i * ci + j * cj],
// R with row stride ldr and unit column stride. Any I and J; meant for I or J narrow (the
// weight gradient and the input gradient of a narrow layer). Requires AVX2.
inline void combine(const float* c, int64_t ci, int64_t cj, const float* r, int64_t ldr,
                    float* out, int64_t ldo, int64_t I, int64_t J, int64_t K) {
#if defined(__AVX2__)
  const int64_t gs = group_size(I);
  const int64_t tasks = (K + kColumnsPerTask - 1) / kColumnsPerTask;
  const int64_t grain =
      std::max<int64_t>(1, kSerialWork / std::max<int64_t>(1, I * J * kColumnsPerTask));
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    const int64_t k0 = t0 * kColumnsPerTask, k1 = std::min(K, t1 * kColumnsPerTask);
    for (int64_t i0 = 0; i0 < I; i0 += gs) {
      with_group(std::min(gs, I - i0), [&]<int G>() {
        combine_rows<G>(c + i0 * ci, ci, cj, r, ldr, J, k0, k1, out + i0 * ldo, ldo);
      });
    }
  });
#else
  TORCH_CHECK(false, "narrow::combine needs AVX2");
#endif
}

}  // namespace sparse_lottery::cpu::narrow
