// Masking kernels: dst = src ⊙ mask for one matrix (launch_mask) and, in place, for many
// tensors of any dtypes in one launch (launch_multi_mask). See launch.h for the contracts.
//
// Masking never looks at the values, so one instantiation per element *size* serves every
// dtype. Each thread handles groups of V = 16 / sizeof(T) consecutive elements of a row: one
// 128-bit load and store of the data, V mask bytes (bool) or V bits of one packed byte.
#include "launch.h"

namespace sparse_lottery {
namespace cuda {
namespace {

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Keep-flags of columns c0 .. c0+V-1 of one packed row (bit j = column c0 + j). c0 is a
// multiple of V and V divides 8 (V = 16: two bytes), so no flag straddles a byte boundary.
template <int V>
__device__ __forceinline__ uint32_t packed_flags(const uint8_t* __restrict__ row, int64_t c0,
                                                 int64_t cols) {
  if constexpr (V == 16) {
    const uint32_t lo = __ldg(row + (c0 >> 3));
    const uint32_t hi = (c0 + 8 < cols) ? __ldg(row + (c0 >> 3) + 1) : 0u;
    return lo | (hi << 8);
  } else {
    return (static_cast<uint32_t>(__ldg(row + (c0 >> 3))) >> (c0 & 7)) & ((1u << V) - 1u);
  }
}

// Group (r, c0 .. c0+V-1): dst = keep ? src : 0; src may equal dst. A group cut by the row's
// end, or any group when !vec, takes the element-wise path.
template <typename T, bool kPacked>
__device__ __forceinline__ void mask_group(const T* src, T* dst, const uint8_t* __restrict__ mask,
                                           int64_t cols, int64_t mask_ld, bool vec, int64_t r,
                                           int64_t c0) {
  constexpr int V = kVecBytes / sizeof(T);
  const int64_t base = r * cols + c0;
  const int n = cols - c0 < V ? static_cast<int>(cols - c0) : V;
  const bool whole = vec && n == V;
  uint32_t keep = 0;
  if constexpr (kPacked) {
    keep = packed_flags<V>(mask + r * mask_ld, c0, cols);
  } else if (whole) {
    const Vec<uint8_t, V> m = *reinterpret_cast<const Vec<uint8_t, V>*>(mask + base);
#pragma unroll
    for (int j = 0; j < V; ++j) keep |= static_cast<uint32_t>(m.v[j] != 0) << j;
  } else {
    for (int j = 0; j < n; ++j) keep |= static_cast<uint32_t>(mask[base + j] != 0) << j;
  }
  if (whole) {
    Vec<T, V> x = *reinterpret_cast<const Vec<T, V>*>(src + base);
#pragma unroll
    for (int j = 0; j < V; ++j) x.v[j] = ((keep >> j) & 1u) ? x.v[j] : T(0);
    *reinterpret_cast<Vec<T, V>*>(dst + base) = x;
  } else {
    for (int j = 0; j < n; ++j) dst[base + j] = ((keep >> j) & 1u) ? src[base + j] : T(0);
  }
}

template <typename T, bool kPacked>
__global__ void __launch_bounds__(kThreads)
    mask_kernel(const T* src, T* dst, const uint8_t* __restrict__ mask, int64_t cols,
                int64_t mask_ld, int64_t groups_per_row, int64_t groups, bool vec) {
  constexpr int V = kVecBytes / sizeof(T);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += stride) {
    const int64_t r = g / groups_per_row;
    mask_group<T, kPacked>(src, dst, mask, cols, mask_ld, vec, r, (g - r * groups_per_row) * V);
  }
}

template <typename T, bool kPacked>
__device__ __forceinline__ void mask_chunk(T* data, const uint8_t* mask, int64_t cols,
                                           int64_t mask_ld, int64_t groups_per_row, bool vec,
                                           int64_t g0, int64_t g1) {
  constexpr int V = kVecBytes / sizeof(T);
  for (int64_t g = g0 + threadIdx.x; g < g1; g += blockDim.x) {
    const int64_t r = g / groups_per_row;
    mask_group<T, kPacked>(data, data, mask, cols, mask_ld, vec, r, (g - r * groups_per_row) * V);
  }
}

__global__ void __launch_bounds__(kThreads)
    multi_mask_kernel(const int64_t* __restrict__ jobs, const int64_t* __restrict__ chunks) {
  const int64_t chunk = 2 * static_cast<int64_t>(blockIdx.x);
  const int64_t* job = jobs + kJobFields * chunks[chunk];
  const int64_t g0 = chunks[chunk + 1];
  void* data = reinterpret_cast<void*>(job[0]);
  const auto* mask = reinterpret_cast<const uint8_t*>(job[1]);
  const int64_t cols = job[2], mask_ld = job[3], gpr = job[4], groups = job[5], flags = job[6];
  const int64_t g1 = g0 + kChunkGroups < groups ? g0 + kChunkGroups : groups;
  const bool packed = (flags >> 8) & 1, vec = (flags >> 9) & 1;
#define SL_CHUNK(T)                                                                          \
  packed ? mask_chunk<T, true>(static_cast<T*>(data), mask, cols, mask_ld, gpr, vec, g0, g1) \
         : mask_chunk<T, false>(static_cast<T*>(data), mask, cols, mask_ld, gpr, vec, g0, g1)
  switch (flags & 0xff) {  // uniform per block: no divergence
    case 1: SL_CHUNK(uint8_t); break;
    case 2: SL_CHUNK(uint16_t); break;
    case 4: SL_CHUNK(uint32_t); break;
    default: SL_CHUNK(uint64_t); break;
  }
#undef SL_CHUNK
}

template <typename T>
void launch_mask_typed(const void* src, void* dst, const uint8_t* mask, bool packed, int64_t rows,
                       int64_t cols, int64_t mask_ld, bool vec, int64_t max_blocks,
                       cudaStream_t stream) {
  constexpr int64_t V = kVecBytes / sizeof(T);
  const int64_t gpr = (cols + V - 1) / V;
  const int64_t groups = rows * gpr;
  int64_t blocks = (groups + kThreads - 1) / kThreads;
  blocks = blocks < max_blocks ? blocks : max_blocks;
  const auto* s = static_cast<const T*>(src);
  auto* d = static_cast<T*>(dst);
  if (packed) {
    mask_kernel<T, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        s, d, mask, cols, mask_ld, gpr, groups, vec);
  } else {
    mask_kernel<T, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        s, d, mask, cols, mask_ld, gpr, groups, vec);
  }
}

}  // namespace

cudaError_t launch_mask(const void* src, void* dst, const uint8_t* mask, int elem_bytes,
                        bool packed, int64_t rows, int64_t cols, int64_t mask_ld, bool vec,
                        int64_t max_blocks, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  switch (elem_bytes) {
    case 1:
      launch_mask_typed<uint8_t>(src, dst, mask, packed, rows, cols, mask_ld, vec, max_blocks,
                                 stream);
      break;
    case 2:
      launch_mask_typed<uint16_t>(src, dst, mask, packed, rows, cols, mask_ld, vec, max_blocks,
                                  stream);
      break;
    case 4:
      launch_mask_typed<uint32_t>(src, dst, mask, packed, rows, cols, mask_ld, vec, max_blocks,
                                  stream);
      break;
    case 8:
      launch_mask_typed<uint64_t>(src, dst, mask, packed, rows, cols, mask_ld, vec, max_blocks,
                                  stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_multi_mask(const int64_t* jobs, const int64_t* chunks, int64_t n_chunks,
                              cudaStream_t stream) {
  if (n_chunks <= 0) return cudaSuccess;
  multi_mask_kernel<<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(jobs, chunks);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparse_lottery
