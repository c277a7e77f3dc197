// Launchers of the masked optimiser kernels (masked_optim.cu): plain C++ over raw pointers, no
// ATen, like launch.h. Each queues one kernel on `stream` and returns cudaGetLastError().
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "optim_math.h"

namespace sparse_lottery {
namespace cuda {

constexpr int kOptimJobFields = 9;      // int64 fields of one parameter's job, see below
constexpr int64_t kOptimChunk = 2048;   // elements per block

// Dtype codes of the job flags.
enum OptimDtype : int64_t { kOptF32 = 0, kOptF64 = 1, kOptF16 = 2, kOptBF16 = 3 };

// `jobs` (device): kOptimJobFields int64 per parameter, all tensors contiguous:
//   param, grad, state1, state2, mask pointers (0: absent; states by op: SGD momentum buffer
//   or 0, AdamW exp_avg and exp_avg_sq; mask 0: every entry survives),
//   cols (of the GEMM view), mask_ld (bytes per packed mask row), numel,
//   flags = dtype code | packed << 8 (packed: uint8 rows of mask_ld bytes; else one bool per
//   element).
// `chunks` (device): 2 int64 per block: job index, first element (a multiple of kOptimChunk).
// Pruned entries (mask 0) are neither read nor written.
cudaError_t launch_masked_sgd(const int64_t* jobs, const int64_t* chunks, int64_t n_chunks,
                              const optim::SgdHyper& h, cudaStream_t stream);
cudaError_t launch_masked_adamw(const int64_t* jobs, const int64_t* chunks, int64_t n_chunks,
                                const optim::AdamHyper& h, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparse_lottery
