// pack / unpack kernels of the 1-bit mask format (launch.h), and the build's architecture list.
// One thread per packed byte: it reads (writes) that byte's 8 bools as one 8-byte access when
// they lie inside the row and are aligned, else one by one.
#include "launch.h"

namespace sparse_lottery {
namespace cuda {
namespace {

struct alignas(8) Bytes8 {
  uint8_t v[8];
};

__global__ void __launch_bounds__(kThreads)
    pack_kernel(const uint8_t* __restrict__ mask, uint8_t* __restrict__ out, int64_t cols,
                int64_t row_bytes, int64_t total, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < total;
       o += stride) {
    const int64_t r = o / row_bytes;
    const int64_t c = (o - r * row_bytes) * 8;
    const int64_t base = r * cols + c;
    const int n = cols - c < 8 ? static_cast<int>(cols - c) : 8;
    uint32_t bits = 0;
    if (vec && n == 8) {
      const Bytes8 m = *reinterpret_cast<const Bytes8*>(mask + base);
#pragma unroll
      for (int j = 0; j < 8; ++j) bits |= static_cast<uint32_t>(m.v[j] != 0) << j;
    } else {
      for (int j = 0; j < n; ++j) bits |= static_cast<uint32_t>(mask[base + j] != 0) << j;
    }
    out[o] = static_cast<uint8_t>(bits);
  }
}

__global__ void __launch_bounds__(kThreads)
    unpack_kernel(const uint8_t* __restrict__ packed, uint8_t* __restrict__ out, int64_t cols,
                  int64_t row_bytes, int64_t total, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < total;
       o += stride) {
    const int64_t r = o / row_bytes;
    const int64_t c = (o - r * row_bytes) * 8;
    const int64_t base = r * cols + c;
    const int n = cols - c < 8 ? static_cast<int>(cols - c) : 8;
    const uint32_t bits = packed[o];
    if (vec && n == 8) {
      Bytes8 m;
#pragma unroll
      for (int j = 0; j < 8; ++j) m.v[j] = static_cast<uint8_t>((bits >> j) & 1u);
      *reinterpret_cast<Bytes8*>(out + base) = m;
    } else {
      for (int j = 0; j < n; ++j) out[base + j] = static_cast<uint8_t>((bits >> j) & 1u);
    }
  }
}

unsigned blocks_for(int64_t work, int64_t max_blocks) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks);
}

}  // namespace

cudaError_t launch_pack(const uint8_t* mask, uint8_t* out, int64_t rows, int64_t cols,
                        int64_t row_bytes, bool vec, int64_t max_blocks, cudaStream_t stream) {
  const int64_t total = rows * row_bytes;
  if (total <= 0) return cudaSuccess;
  pack_kernel<<<blocks_for(total, max_blocks), kThreads, 0, stream>>>(mask, out, cols, row_bytes,
                                                                      total, vec);
  return cudaGetLastError();
}

cudaError_t launch_unpack(const uint8_t* packed, uint8_t* out, int64_t rows, int64_t cols,
                          int64_t row_bytes, bool vec, int64_t max_blocks, cudaStream_t stream) {
  const int64_t total = rows * row_bytes;
  if (total <= 0 || cols <= 0) return cudaSuccess;
  unpack_kernel<<<blocks_for(total, max_blocks), kThreads, 0, stream>>>(packed, out, cols,
                                                                        row_bytes, total, vec);
  return cudaGetLastError();
}

#define SL_STR2(...) #__VA_ARGS__
#define SL_STR(...) SL_STR2(__VA_ARGS__)
const char* compiled_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return SL_STR(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}
#undef SL_STR
#undef SL_STR2

}  // namespace cuda
}  // namespace sparse_lottery
