// What the passes of the CPU selection kernels compute from a block (select_blocks.h): bit masks
// of key comparisons, the running maximum key (the NaN check), histogram counts, and the write
// of the block's new mask. AVX2 bodies when compiled for it, scalar otherwise.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "select_blocks.h"

namespace sparse_lottery::cpu::select {

// Bit j: key j > v, compared as int32 (keys are below 2^31).
SL_ALWAYS_INLINE uint32_t bits_greater(const Block& b, int32_t v) {
  uint32_t bits = 0;
#if defined(__AVX2__)
  const __m256i t = _mm256_set1_epi32(v);
  for (int i = 0; i < 4; ++i) {
    const int m = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(b.v[i], t)));
    bits |= static_cast<uint32_t>(m) << (8 * i);
  }
#else
  for (int j = 0; j < kBlock; ++j)
    bits |= static_cast<uint32_t>(static_cast<int32_t>(b.v[j]) > v) << j;
#endif
  return bits;
}

// Running maximum of every key (survivor or not): a NaN weight makes it exceed kInfKey.
struct MaxKey {
#if defined(__AVX2__)
  __m256i v = _mm256_setzero_si256();
  SL_ALWAYS_INLINE void add(const Block& b) {
    v = _mm256_max_epu32(v, _mm256_max_epu32(_mm256_max_epu32(b.v[0], b.v[1]),
                                             _mm256_max_epu32(b.v[2], b.v[3])));
  }
  uint32_t get() const {
    alignas(32) uint32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
    return *std::max_element(lanes, lanes + 8);
  }
#else
  uint32_t v = 0;
  void add(const Block& b) { v = std::max(v, *std::max_element(b.v, b.v + kBlock)); }
  uint32_t get() const { return v; }
#endif
};

// hist[(key - lo) >> shift] += 1 for each survivor with key in [lo, lo + 2^width);
// hist[dummy] += 1 for other elements (all of them, padding lanes included, unless few survive).
inline void histogram_block(const Block& b, uint32_t lo, int width, int shift, uint32_t dummy,
                            uint32_t* hist) {
  alignas(32) uint32_t idx[kBlock];
  if (std::popcount(b.surv) <= 8) {  // sparse masks: count the survivors only
    b.get(idx);
    for (uint32_t rest = b.surv; rest; rest &= rest - 1) {
      const uint32_t d = idx[std::countr_zero(rest)] - lo;
      ++hist[(d >> width) == 0 ? d >> shift : dummy];
    }
    return;
  }
#if defined(__AVX2__)
  const __m256i lov = _mm256_set1_epi32(static_cast<int32_t>(lo));
  const __m256i dv = _mm256_set1_epi32(static_cast<int32_t>(dummy));
  const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m128i wc = _mm_cvtsi32_si128(width), sc = _mm_cvtsi32_si128(shift);
  for (int i = 0; i < 4; ++i) {
    const __m256i d = _mm256_sub_epi32(b.v[i], lov);
    const __m256i inside = _mm256_cmpeq_epi32(_mm256_srl_epi32(d, wc), _mm256_setzero_si256());
    const __m256i sel = _mm256_and_si256(
        _mm256_set1_epi32(static_cast<int32_t>(b.surv >> (8 * i))), lanes);
    const __m256i take = _mm256_and_si256(inside, _mm256_cmpeq_epi32(sel, lanes));
    const __m256i bucket = _mm256_blendv_epi8(dv, _mm256_srl_epi32(d, sc), take);
    _mm256_store_si256(reinterpret_cast<__m256i*>(idx + 8 * i), bucket);
  }
#else
  for (int j = 0; j < kBlock; ++j) {
    const uint32_t d = b.v[j] - lo;
    idx[j] = ((b.surv >> j) & 1) && (d >> width) == 0 ? d >> shift : dummy;
  }
#endif
  for (int j = 0; j < kBlock; ++j) ++hist[idx[j]];
}

template <MaskKind M>
SL_ALWAYS_INLINE void write_block(const Source& s, int64_t row, int64_t col, int n,
                                  uint32_t keep) {
  if constexpr (M == MaskKind::kPacked) {
    uint8_t* o = s.out + row * s.row_bytes + col / 8;
    if (n == kBlock) {
      std::memcpy(o, &keep, 4);
      return;
    }
    for (int b = 0; b < (n + 7) / 8; ++b) o[b] = static_cast<uint8_t>(keep >> (8 * b));
  } else {
    uint8_t* o = s.out + row * s.cols + col;
#if defined(__AVX2__)
    if (n == kBlock) {  // bit j -> byte j (0 or 1)
      const __m256i spread = _mm256_shuffle_epi8(
          _mm256_set1_epi32(static_cast<int32_t>(keep)),
          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                           3, 3, 3, 3, 3, 3, 3, 3));
      const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
      const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o),
                          _mm256_and_si256(set, _mm256_set1_epi8(1)));
      return;
    }
#endif
    for (int j = 0; j < n; ++j) o[j] = static_cast<uint8_t>((keep >> j) & 1);
  }
}

// Sets element e (row-major in the view) of s's new mask to `keep`.
inline void set_element(const Source& s, int64_t e, bool keep) {
  if (s.mask == MaskKind::kPacked) {
    const int64_t row = e / s.cols, col = e % s.cols;
    uint8_t& byte = s.out[row * s.row_bytes + col / 8];
    const auto bit = static_cast<uint8_t>(1u << (col & 7));
    byte = keep ? byte | bit : byte & static_cast<uint8_t>(~bit);
  } else {
    s.out[e] = keep;
  }
}

}  // namespace sparse_lottery::cpu::select
