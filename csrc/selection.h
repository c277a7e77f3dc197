// Definitions shared by every implementation of the selection ops (magnitude_prune and
// random_prune): the CPU kernels, the CUDA kernels, the Triton kernels and the pure-PyTorch
// reference (sparse_lottery/reference.py) all rank weights by the same keys, so they choose the
// same weights, bit for bit.
//
// Semantics (documented for users in sparse_lottery/selection.py):
// - Only surviving weights (mask bit set; every weight when the mask is absent) are ranked.
// - A group is the whole pool (scope "global") or one tensor (scope "layerwise"). A group
//   removes exactly k of its S survivors: k = amount for counts, else round-half-even(amount·S)
//   computed in double (Python's round(amount * S), as torch.nn.utils.prune does).
// - The k survivors with the smallest keys are removed. Ties at the threshold key are broken by
//   position: the survivor that comes first — lower tensor index, then row-major index in the
//   tensor (its GEMM view's (row, col)) — is removed first.
// - Magnitude key: the bit pattern of |w| as float32 (bfloat16 and float16 widen exactly), an
//   unsigned integer whose order is the order of magnitudes; -0.0 and 0.0 share key 0; ±inf
//   is the largest key; a key above kInfKey is a NaN, which is an error naming the tensor.
// - Random key: 31 bits of a SplitMix64 hash of (seed, tensor index, row, col), so the same seed
//   selects the same weights on every device and for bool or packed masks.
// - The reported threshold is the magnitude of the largest removed weight (0.0 when none).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SL_HOST_DEVICE inline
#endif

namespace sparse_lottery::selection {

constexpr int kKeyBits = 31;
constexpr uint32_t kInfKey = 0x7f800000u;  // |inf|; larger keys are NaNs

SL_HOST_DEVICE uint32_t key_from_float_bits(uint32_t bits) { return bits & 0x7fffffffu; }

SL_HOST_DEVICE uint32_t key_from_bfloat16_bits(uint16_t bits) {
  return (static_cast<uint32_t>(bits) << 16) & 0x7fffffffu;
}

// |h| widened exactly to float32 bits (subnormals normalised, inf and NaN kept).
SL_HOST_DEVICE uint32_t key_from_half_bits(uint16_t bits) {
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return kInfKey | (mantissa << 13);
  if (exponent != 0) return ((exponent + 112u) << 23) | (mantissa << 13);
  if (mantissa == 0) return 0;
  int top = 9;  // position of the leading one of a subnormal's mantissa
  while (!(mantissa & (1u << top))) --top;
  mantissa = (mantissa << (10 - top)) & 0x3ffu;
  return (static_cast<uint32_t>(top + 103) << 23) | (mantissa << 13);
}

// SplitMix64's finaliser.
SL_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Per-tensor stream of random_prune's keys.
SL_HOST_DEVICE uint64_t random_stream(uint64_t seed, int64_t tensor_index) {
  return mix64(seed + 0x9E3779B97F4A7C15ull * (static_cast<uint64_t>(tensor_index) + 1));
}

SL_HOST_DEVICE uint32_t random_key(uint64_t stream, int64_t row, int64_t col) {
  const uint64_t position = static_cast<uint64_t>(row) * 0xD1B54A32D192ED03ull +
                            static_cast<uint64_t>(col) * 0x8CB92BA72F3D8DD7ull;
  return static_cast<uint32_t>(mix64(stream ^ position) >> 33);
}

}  // namespace sparse_lottery::selection
