// Element access of the CPU selection kernels (internal to csrc/cpu/): the 31-bit keys
// (selection.h) and survivor bits of blocks of up to 32 consecutive elements of one row of a
// tensor's view, and the walk over them. Blocks start at a column that is a multiple of 32, so
// a block of a packed mask is whole bytes. A block's keys stay in four AVX2 registers when
// compiled for it (setup.py builds with -march=x86-64-v3), in an array otherwise.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../selection.h"

#if defined(__GNUC__)
#define SL_ALWAYS_INLINE inline __attribute__((always_inline))
#define SL_INLINE_LAMBDA __attribute__((always_inline))  // after a lambda's parameters
#else
#define SL_ALWAYS_INLINE inline
#define SL_INLINE_LAMBDA
#endif

namespace sparse_lottery::cpu::select {

enum class KeyKind { kFloat, kBFloat16, kHalf, kRandom };
enum class MaskKind { kNone, kBool, kPacked };

constexpr int kBlock = 32;

// One tensor of a selection group, viewed as `rows` x `cols` row-major elements: its GEMM view,
// or (1, numel) when neither the keys nor the mask need rows (magnitude keys, bool or no mask).
// Pointers are to contiguous data.
struct Source {
  KeyKind key;
  MaskKind mask;             // the given mask; the new one has the same form (bool when kNone)
  const void* weights;       // magnitude keys: rows*cols elements of the key's dtype
  const uint8_t* mask_data;  // bool: rows*cols bytes; packed: rows*row_bytes; null when kNone
  uint8_t* out;              // the new mask, laid out like mask_data (bool bytes when kNone)
  int64_t rows, cols, row_bytes;
  uint64_t stream;  // random keys: selection::random_stream(seed, tensor index)
  int64_t numel() const { return rows * cols; }
};

struct Block {
#if defined(__AVX2__)
  __m256i v[4];  // keys of elements 8i..8i+7; zero past n
  void set(const uint32_t* keys) {
    for (int i = 0; i < 4; ++i)
      v[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + 8 * i));
  }
  void get(uint32_t* keys) const {
    for (int i = 0; i < 4; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + 8 * i), v[i]);
  }
#else
  uint32_t v[kBlock];
  void set(const uint32_t* keys) { std::memcpy(v, keys, sizeof v); }
  void get(uint32_t* keys) const { std::memcpy(keys, v, sizeof v); }
#endif
  uint32_t surv;  // bit j: element j survives (zero past n)
  int n;
};

inline uint32_t low_bits(int n) { return n >= 32 ? ~0u : (1u << n) - 1u; }

// ------------------------------------------------------------------------------------ keys
#if defined(__AVX2__)
// x * c (mod 2^64) per 64-bit lane.
inline __m256i mul64(__m256i x, uint64_t c) {
  const __m256i cl = _mm256_set1_epi64x(static_cast<int64_t>(c & 0xffffffffu));
  const __m256i ch = _mm256_set1_epi64x(static_cast<int64_t>(c >> 32));
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(x, 32), cl),
                                         _mm256_mul_epu32(x, ch));
  return _mm256_add_epi64(_mm256_mul_epu32(x, cl), _mm256_slli_epi64(cross, 32));
}

// selection::random_key(stream, row, col + j) for j < 32. The key is the top 31 bits of the
// second product of mix64 (its final xor-shift does not reach them).
inline void random_block(uint64_t stream, int64_t row, int64_t col, __m256i* v) {
  constexpr uint64_t kRow = 0xD1B54A32D192ED03ull, kCol = 0x8CB92BA72F3D8DD7ull;
  const uint64_t base = static_cast<uint64_t>(row) * kRow + static_cast<uint64_t>(col) * kCol;
  __m256i pos = _mm256_setr_epi64x(static_cast<int64_t>(base), static_cast<int64_t>(base + kCol),
                                   static_cast<int64_t>(base + 2 * kCol),
                                   static_cast<int64_t>(base + 3 * kCol));
  const __m256i step = _mm256_set1_epi64x(static_cast<int64_t>(4 * kCol));
  const __m256i s = _mm256_set1_epi64x(static_cast<int64_t>(stream));
  __m256i out[8];
  for (int i = 0; i < 8; ++i) {
    __m256i z = _mm256_xor_si256(pos, s);
    z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), 0xBF58476D1CE4E5B9ull);
    z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), 0x94D049BB133111EBull);
    out[i] = _mm256_srli_epi64(z, 33);
    pos = _mm256_add_epi64(pos, step);
  }
  for (int i = 0; i < 4; ++i) {  // the low dwords of two 4-lane vectors, in element order
    const __m256 mixed = _mm256_shuffle_ps(_mm256_castsi256_ps(out[2 * i]),
                                           _mm256_castsi256_ps(out[2 * i + 1]),
                                           _MM_SHUFFLE(2, 0, 2, 0));
    v[i] = _mm256_permute4x64_epi64(_mm256_castps_si256(mixed), _MM_SHUFFLE(3, 1, 2, 0));
  }
}
#endif

template <KeyKind K>
SL_ALWAYS_INLINE void load_keys(const Source& s, int64_t row, int64_t col, int n, Block& b) {
  const int64_t e = row * s.cols + col;
#if defined(__AVX2__)
  if (n == kBlock) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff);
    if constexpr (K == KeyKind::kFloat) {
      const auto* p = reinterpret_cast<const __m256i*>(static_cast<const uint32_t*>(s.weights) + e);
      for (int i = 0; i < 4; ++i) b.v[i] = _mm256_and_si256(_mm256_loadu_si256(p + i), abs);
      return;
    } else if constexpr (K == KeyKind::kBFloat16) {
      const auto* w = static_cast<const uint16_t*>(s.weights) + e;
      for (int i = 0; i < 4; ++i) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 8 * i));
        b.v[i] = _mm256_and_si256(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16), abs);
      }
      return;
    } else if constexpr (K == KeyKind::kHalf) {
#if defined(__F16C__)  // exact widening; NaN stays NaN (key > kInfKey), as key_from_half_bits
      const auto* w = static_cast<const uint16_t*>(s.weights) + e;
      for (int i = 0; i < 4; ++i) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 8 * i));
        b.v[i] = _mm256_and_si256(_mm256_castps_si256(_mm256_cvtph_ps(h)), abs);
      }
      return;
#endif
    } else {
      random_block(s.stream, row, col, b.v);
      return;
    }
  }
#endif
  uint32_t key[kBlock] = {};
  if constexpr (K == KeyKind::kFloat) {
    const uint32_t* w = static_cast<const uint32_t*>(s.weights) + e;
    for (int j = 0; j < n; ++j) key[j] = selection::key_from_float_bits(w[j]);
  } else if constexpr (K == KeyKind::kBFloat16) {
    const uint16_t* w = static_cast<const uint16_t*>(s.weights) + e;
    for (int j = 0; j < n; ++j) key[j] = selection::key_from_bfloat16_bits(w[j]);
  } else if constexpr (K == KeyKind::kHalf) {
    const uint16_t* w = static_cast<const uint16_t*>(s.weights) + e;
    for (int j = 0; j < n; ++j) key[j] = selection::key_from_half_bits(w[j]);
  } else {
    for (int j = 0; j < n; ++j) key[j] = selection::random_key(s.stream, row, col + j);
  }
  b.set(key);
}

// ---------------------------------------------------------------------------- survivors
template <MaskKind M>
SL_ALWAYS_INLINE uint32_t load_survivors(const Source& s, int64_t row, int64_t col, int n) {
  if constexpr (M == MaskKind::kNone) {
    return low_bits(n);
  } else if constexpr (M == MaskKind::kBool) {
    const uint8_t* m = s.mask_data + row * s.cols + col;
#if defined(__AVX2__)
    if (n == kBlock) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m));
      return ~static_cast<uint32_t>(
          _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_setzero_si256())));
    }
#endif
    uint32_t bits = 0;
    for (int j = 0; j < n; ++j) bits |= static_cast<uint32_t>(m[j] != 0) << j;
    return bits;
  } else {
    const uint8_t* m = s.mask_data + row * s.row_bytes + col / 8;
    uint32_t bits = 0;
    if (n == kBlock) {
      std::memcpy(&bits, m, 4);  // little-endian: byte b holds columns 8b..8b+7
      return bits;
    }
    for (int b = 0; b < (n + 7) / 8; ++b) bits |= static_cast<uint32_t>(m[b]) << (8 * b);
    return bits & low_bits(n);  // padding bits past the last column are not survivors
  }
}

template <KeyKind K, MaskKind M>
SL_ALWAYS_INLINE void load_block(const Source& s, int64_t row, int64_t col, int n, Block& b) {
  b.n = n;
  load_keys<K>(s, row, col, n, b);
  b.surv = load_survivors<M>(s, row, col, n);
}

// Prefetches the weights and mask of the block at element e of s.
inline void prefetch_block(const Source& s, int64_t e) {
  if (s.weights != nullptr) {
    const char* w = static_cast<const char*>(s.weights) + e * (s.key == KeyKind::kFloat ? 4 : 2);
    __builtin_prefetch(w);
    __builtin_prefetch(w + 64);
  }
  if (s.mask == MaskKind::kBool) {
    __builtin_prefetch(s.mask_data + e);
  } else if (s.mask == MaskKind::kPacked) {
    __builtin_prefetch(s.mask_data + e / s.cols * s.row_bytes + e % s.cols / 8);
  }
}

// --------------------------------------------------------------------------- iteration
// Calls f(key_tag, mask_tag) with std::integral_constant tags of s's kinds.
template <class F>
inline void with_kinds(const Source& s, F&& f) {
  auto mask = [&](auto key) {
    switch (s.mask) {
      case MaskKind::kNone: return f(key, std::integral_constant<MaskKind, MaskKind::kNone>{});
      case MaskKind::kBool: return f(key, std::integral_constant<MaskKind, MaskKind::kBool>{});
      case MaskKind::kPacked:
        return f(key, std::integral_constant<MaskKind, MaskKind::kPacked>{});
    }
  };
  switch (s.key) {
    case KeyKind::kFloat: return mask(std::integral_constant<KeyKind, KeyKind::kFloat>{});
    case KeyKind::kBFloat16: return mask(std::integral_constant<KeyKind, KeyKind::kBFloat16>{});
    case KeyKind::kHalf: return mask(std::integral_constant<KeyKind, KeyKind::kHalf>{});
    case KeyKind::kRandom: return mask(std::integral_constant<KeyKind, KeyKind::kRandom>{});
  }
}

// f(row, col, n) for the blocks of elements [e0, e1) of s (row-major in its view; e0 and e1
// at a column that is a multiple of 32 or at a row's end).
template <class F>
SL_ALWAYS_INLINE void for_block_spans(const Source& s, int64_t e0, int64_t e1, F&& f) {
  if (e0 >= e1) return;
  int64_t row = e0 / s.cols, col = e0 % s.cols, e = e0;
  while (e < e1) {
    const int64_t row_end = std::min(s.cols, col + (e1 - e));
    for (; col + kBlock <= row_end; col += kBlock) f(row, col, kBlock);
    if (col < row_end) {
      f(row, col, static_cast<int>(row_end - col));
      col = row_end;
    }
    e = row * s.cols + col;
    if (col == s.cols) {
      ++row;
      col = 0;
    }
  }
}

// f(block, row, col, e) for the blocks of elements [e0, e1) of s, e the block's first element.
template <KeyKind K, MaskKind M, class F>
SL_ALWAYS_INLINE void for_blocks(const Source& s, int64_t e0, int64_t e1, F&& f) {
  for_block_spans(s, e0, e1, [&](int64_t row, int64_t col, int n) SL_INLINE_LAMBDA {
    Block b;
    load_block<K, M>(s, row, col, n, b);
    f(b, row, col, row * s.cols + col);
  });
}

// Survivors among elements [e0, e1) of s (bounds as for_blocks), from the mask alone.
template <MaskKind M>
inline int64_t count_mask(const Source& s, int64_t e0, int64_t e1) {
  if constexpr (M == MaskKind::kNone) {
    return std::max<int64_t>(0, e1 - e0);
  } else {
    int64_t found = 0;
    for_block_spans(s, e0, e1, [&](int64_t row, int64_t col, int n) {
      found += std::popcount(load_survivors<M>(s, row, col, n));
    });
    return found;
  }
}

}  // namespace sparse_lottery::cpu::select
