// Vectorised masking primitives shared by the CPU kernels (internal to csrc/cpu/).
//
// Elements are handled as unsigned integers of their width (uint16_t for bf16/fp16, uint32_t for
// fp32, uint64_t for fp64): masking is a bitwise AND with all-ones or all-zeros, so a pruned entry
// becomes exactly +0 whatever it held (NaN, inf, -0), and one kernel serves every float dtype of a
// width. AVX2 bodies when compiled for it (setup.py builds with -march=x86-64-v3), scalar otherwise.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../mask_format.h"

namespace sparse_lottery::cpu {

// A mask in either form, viewed as rows of the GEMM view of the masked tensor.
// data: bool bytes (one per element, row stride = cols) or packed bits (row stride = ceil(cols/8)
// bytes, bit b of byte c of a row = column 8c+b).
struct MaskRef {
  const uint8_t* data;
  int64_t row_stride;  // bytes
  bool packed;
};

inline MaskRef mask_ref(const at::Tensor& contiguous_mask, int64_t cols) {
  const bool packed = contiguous_mask.scalar_type() == at::kByte;
  return {static_cast<const uint8_t*>(contiguous_mask.data_ptr()),
          packed ? (cols + 7) / 8 : cols, packed};
}

// Packed: dst[j] = src[j] if bit (bit0 + j) of `bits` is set, else 0, for j in [0, n).
// src and dst hold n elements and may be the same pointer (in place).
template <typename T>
inline void mask_packed(const T* src, const uint8_t* bits, int64_t bit0, int64_t n, T* dst) {
  int64_t j = 0;
  for (; j < n && ((bit0 + j) & 7); ++j) {
    const int64_t b = bit0 + j;
    dst[j] = src[j] & static_cast<T>(0 - static_cast<T>((bits[b >> 3] >> (b & 7)) & 1));
  }
  const uint8_t* by = bits + ((bit0 + j) >> 3);
  const int64_t nbytes = (n - j) >> 3;
  int64_t i = 0;
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (; i < nbytes; ++i) {
      const __m256i sel = _mm256_and_si256(_mm256_set1_epi32(by[i]), lanes);
      const __m256i keep = _mm256_cmpeq_epi32(sel, lanes);
      const auto* s = reinterpret_cast<const __m256i*>(src + j + 8 * i);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j + 8 * i),
                          _mm256_and_si256(_mm256_loadu_si256(s), keep));
    }
  } else if constexpr (sizeof(T) == 2) {
    const __m256i lanes = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048,
                                            4096, 8192, 16384, static_cast<int16_t>(32768));
    for (; i + 1 < nbytes; i += 2) {
      const int16_t two = static_cast<int16_t>(by[i] | (by[i + 1] << 8));
      const __m256i sel = _mm256_and_si256(_mm256_set1_epi16(two), lanes);
      const __m256i keep = _mm256_cmpeq_epi16(sel, lanes);
      const auto* s = reinterpret_cast<const __m256i*>(src + j + 8 * i);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j + 8 * i),
                          _mm256_and_si256(_mm256_loadu_si256(s), keep));
    }
  } else if constexpr (sizeof(T) == 8) {
    const __m256i lo = _mm256_setr_epi64x(1, 2, 4, 8), hi = _mm256_setr_epi64x(16, 32, 64, 128);
    for (; i < nbytes; ++i) {
      const __m256i v = _mm256_set1_epi64x(by[i]);
      const __m256i klo = _mm256_cmpeq_epi64(_mm256_and_si256(v, lo), lo);
      const __m256i khi = _mm256_cmpeq_epi64(_mm256_and_si256(v, hi), hi);
      const auto* s = reinterpret_cast<const __m256i*>(src + j + 8 * i);
      auto* d = reinterpret_cast<__m256i*>(dst + j + 8 * i);
      const __m256i s0 = _mm256_loadu_si256(s), s1 = _mm256_loadu_si256(s + 1);
      _mm256_storeu_si256(d, _mm256_and_si256(s0, klo));
      _mm256_storeu_si256(d + 1, _mm256_and_si256(s1, khi));
    }
  }
#endif
  for (; i < nbytes; ++i) {
    const T* s = src + j + 8 * i;
    T* d = dst + j + 8 * i;
    const unsigned byte = by[i];
    for (int k = 0; k < 8; ++k) d[k] = s[k] & static_cast<T>(0 - static_cast<T>((byte >> k) & 1));
  }
  j += nbytes * 8;
  for (; j < n; ++j) {
    const int64_t b = bit0 + j;
    dst[j] = src[j] & static_cast<T>(0 - static_cast<T>((bits[b >> 3] >> (b & 7)) & 1));
  }
}

// Bool: dst[j] = src[j] if keep[j] != 0, else 0, for j in [0, n); src and dst may alias.
template <typename T>
inline void mask_bool(const T* src, const uint8_t* keep, int64_t n, T* dst) {
  int64_t j = 0;
#if defined(__AVX2__)
  const __m256i zero = _mm256_setzero_si256();
  if constexpr (sizeof(T) == 4) {
    for (; j + 8 <= n; j += 8) {
      const __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep + j)));
      const __m256i drop = _mm256_cmpeq_epi32(k, zero);
      const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), _mm256_andnot_si256(drop, s));
    }
  } else if constexpr (sizeof(T) == 2) {
    for (; j + 16 <= n; j += 16) {
      const __m256i k = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(keep + j)));
      const __m256i drop = _mm256_cmpeq_epi16(k, zero);
      const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), _mm256_andnot_si256(drop, s));
    }
  } else if constexpr (sizeof(T) == 8) {
    for (; j + 4 <= n; j += 4) {
      int32_t four;
      std::memcpy(&four, keep + j, 4);
      const __m256i k = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(four));
      const __m256i drop = _mm256_cmpeq_epi64(k, zero);
      const __m256i s = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), _mm256_andnot_si256(drop, s));
    }
  }
#endif
  for (; j < n; ++j) dst[j] = src[j] & static_cast<T>(0 - static_cast<T>(keep[j] != 0));
}

// Columns [col, col + n) of row `row`: dst[j] = src[j] ⊙ mask(row, col + j).
template <typename T>
inline void mask_segment(const T* src, const MaskRef& m, int64_t row, int64_t col, int64_t n,
                         T* dst) {
  const uint8_t* r = m.data + row * m.row_stride;
  if (m.packed) {
    mask_packed(src, r, col, n, dst);
  } else {
    mask_bool(src, r + col, n, dst);
  }
}

// Elements [begin, end) of a row-major (rows, cols) tensor, crossing rows as needed.
template <typename T>
inline void mask_range(const T* src, const MaskRef& m, int64_t cols, int64_t begin, int64_t end,
                       T* dst) {
  int64_t row = begin / cols, col = begin % cols;
  while (begin < end) {
    const int64_t n = std::min(cols - col, end - begin);
    mask_segment(src + begin, m, row, col, n, dst + begin);
    begin += n;
    ++row;
    col = 0;
  }
}

// Calls f(T{}) with T the unsigned integer of the element width of `dtype` (2, 4 or 8 bytes).
template <typename F>
inline void dispatch_width(at::ScalarType dtype, const char* name, F&& f) {
  TORCH_CHECK(at::isFloatingType(dtype), name,
              ": expected a floating dtype (torch.float32, torch.float64, torch.bfloat16, "
              "torch.float16), got ", dtype_name(dtype));
  switch (c10::elementSize(dtype)) {
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
    default: TORCH_CHECK(false, name, ": unsupported dtype ", dtype_name(dtype));
  }
}

}  // namespace sparse_lottery::cpu
