// Host-side helpers of the CUDA ops (ATen-facing; the kernels themselves are in the .cu files,
// behind launch.h): CUDA argument checks, launch sizing, alignment tests and mask_into.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "cuda/launch.h"
#include "mask_format.h"

namespace sparse_lottery {
namespace cuda {

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got device ", t.device());
}

// Element sizes the bitwise masking kernels handle: every float dtype, integers, bool.
inline void check_elem_size(const at::Tensor& t, const char* name) {
  const int64_t s = t.element_size();
  TORCH_CHECK(s == 1 || s == 2 || s == 4 || s == 8, name,
              ": expected a dtype of 1, 2, 4 or 8 bytes per element, got ",
              dtype_name(t.scalar_type()));
}

// Grid-stride cap: 16 blocks of kThreads per SM of the current device. (The device properties
// of CUDAContextLight.h would pull in the cuBLAS and cuSPARSE headers.)
inline int64_t max_blocks() {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {};  // 0: not read yet; racing threads write the same value
  const int dev = c10::cuda::current_device();
  int sms = dev < kMaxDevices ? cache[dev] : 0;
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    if (sms <= 0) sms = 1;
    if (dev < kMaxDevices) cache[dev] = sms;
  }
  return int64_t(sms) * 16;
}

inline bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// (rows, cols, mask_ld) of a masking walk over contiguous `t`: a bool mask is indexed like the
// flat tensor (one row), a packed one by (row, column) of the GEMM view.
struct Walk {
  int64_t rows, cols, mask_ld;
};

inline Walk walk_of(const at::Tensor& t, const at::Tensor& mask, bool packed) {
  if (!packed) return {1, t.numel(), t.numel()};
  const auto rc = gemm_view(t.sizes());
  return {rc.first, rc.second, mask.size(1)};
}

// May a walk use 16-byte accesses (see launch_mask)?
inline bool vec_ok(const void* src, const void* dst, const void* mask, bool packed,
                   const Walk& w, int64_t elem_bytes) {
  const int64_t v = kVecBytes / elem_bytes;
  return aligned(src, kVecBytes) && aligned(dst, kVecBytes) && (packed || aligned(mask, v)) &&
         (w.rows == 1 || w.cols % v == 0);
}

// dst = src ⊙ mask on the current stream. src, dst: contiguous, same shape and dtype (dst may
// be src); mask: contiguous bool of src's shape or packed (rows, ceil(cols / 8)).
void mask_into(const at::Tensor& src, const at::Tensor& mask, bool packed, const at::Tensor& dst);

}  // namespace cuda
}  // namespace sparse_lottery
