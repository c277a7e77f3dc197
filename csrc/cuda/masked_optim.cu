// Masked SGD and AdamW over many tensors of any float dtypes in one launch (see optim_launch.h):
// one block per chunk of kOptimChunk elements of one parameter, one thread per element and
// step; a thread whose entry is pruned skips it (no read, no write). Maths: optim_math.h, in
// float for float32/float16/bfloat16 and double for float64.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/launch.h"
#include "cuda/optim_launch.h"

namespace sparse_lottery {
namespace cuda {
namespace {

template <typename T, typename U>
__device__ __forceinline__ void run_chunk(const int64_t* job, int64_t e0, const U& u) {
  T* p = reinterpret_cast<T*>(job[0]);
  const T* g = reinterpret_cast<const T*>(job[1]);
  T* s1 = reinterpret_cast<T*>(job[2]);
  T* s2 = reinterpret_cast<T*>(job[3]);
  const auto* mask = reinterpret_cast<const uint8_t*>(job[4]);
  const int64_t cols = job[5], mask_ld = job[6], numel = job[7];
  const bool packed = (job[8] >> 8) & 1;
  const int64_t e1 = e0 + kOptimChunk < numel ? e0 + kOptimChunk : numel;
  for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
    if (mask != nullptr) {
      bool keep;
      if (packed) {
        const int64_t r = e / cols, c = e - r * cols;
        keep = (__ldg(mask + r * mask_ld + (c >> 3)) >> (c & 7)) & 1;
      } else {
        keep = __ldg(mask + e) != 0;
      }
      if (!keep) continue;
    }
    if (s1 != nullptr) {  // uniform per block
      optim::update_entry<true>(u, p, g, s1, s2, e, true);
    } else {
      optim::update_entry<false>(u, p, g, s1, s2, e, true);
    }
  }
}

template <template <typename> class U>
__global__ void __launch_bounds__(kThreads)
    masked_optim_kernel(const int64_t* __restrict__ jobs, const int64_t* __restrict__ chunks,
                        U<float> u32, U<double> u64) {
  const int64_t chunk = 2 * static_cast<int64_t>(blockIdx.x);
  const int64_t* job = jobs + kOptimJobFields * chunks[chunk];
  const int64_t e0 = chunks[chunk + 1];
  switch (job[8] & 0xff) {  // uniform per block: no divergence
    case kOptF32: run_chunk<float>(job, e0, u32); break;
    case kOptF64: run_chunk<double>(job, e0, u64); break;
    case kOptF16: run_chunk<__half>(job, e0, u32); break;
    default: run_chunk<__nv_bfloat16>(job, e0, u32); break;
  }
}

template <template <typename> class U, typename H>
cudaError_t launch(const int64_t* jobs, const int64_t* chunks, int64_t n_chunks, const H& h,
                   cudaStream_t stream) {
  if (n_chunks <= 0) return cudaSuccess;
  masked_optim_kernel<U><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(
      jobs, chunks, U<float>(h), U<double>(h));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_masked_sgd(const int64_t* jobs, const int64_t* chunks, int64_t n_chunks,
                              const optim::SgdHyper& h, cudaStream_t stream) {
  return launch<optim::SgdUpdate>(jobs, chunks, n_chunks, h, stream);
}

cudaError_t launch_masked_adamw(const int64_t* jobs, const int64_t* chunks, int64_t n_chunks,
                                const optim::AdamHyper& h, cudaStream_t stream) {
  return launch<optim::AdamWUpdate>(jobs, chunks, n_chunks, h, stream);
}

}  // namespace cuda
}  // namespace sparse_lottery
