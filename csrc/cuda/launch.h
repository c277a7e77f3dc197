// Launchers of the CUDA kernels: plain C++ over raw pointers, no ATen, so that the .cu files
// compile in seconds for every architecture and the ATen-facing code (the .cpp files beside
// this) is parsed once, by the host compiler. Each launcher queues its kernel on `stream` and
// returns cudaGetLastError(); nothing is launched for empty work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sparse_lottery {
namespace cuda {

constexpr int kThreads = 256;      // threads per block of every kernel
constexpr int kVecBytes = 16;      // one 128-bit access per thread and step
constexpr int kJobFields = 7;      // int64 fields of one apply_masks_ job, see launch_multi_mask
constexpr int64_t kChunkGroups = int64_t(kThreads) * 8;  // groups per block in launch_multi_mask

// dst = src ⊙ mask over a contiguous (rows, cols) matrix of `elem_bytes`-byte elements (1, 2, 4
// or 8; the select is on raw bits: a kept element is copied, a pruned one becomes all-zero bits,
// +0 for floats). dst may equal src (in place).
//   mask: packed ? uint8 rows of mask_ld bytes, bit c % 8 of byte c / 8 = column c
//                : one byte (bool) per element, row stride cols (rows is 1 for a flat walk)
//   vec:  src, dst (16 bytes) and a bool mask (16 / elem_bytes bytes) are aligned and rows == 1
//         or cols % (16 / elem_bytes) == 0, so whole groups use one 128-bit access
//   max_blocks: grid-stride cap (a multiple of the SM count)
cudaError_t launch_mask(const void* src, void* dst, const uint8_t* mask, int elem_bytes,
                        bool packed, int64_t rows, int64_t cols, int64_t mask_ld, bool vec,
                        int64_t max_blocks, cudaStream_t stream);

// In-place masking of many tensors in one launch. `jobs` (device): kJobFields int64 per tensor:
//   data pointer, mask pointer, cols, mask_ld, groups_per_row, groups,
//   flags = elem_bytes | packed << 8 | vec << 9   (fields as in launch_mask; rows = groups / gpr)
// `chunks` (device): 2 int64 per block: job index, first group (groups of 16 bytes of data);
// one block masks kChunkGroups groups of its job.
cudaError_t launch_multi_mask(const int64_t* jobs, const int64_t* chunks, int64_t n_chunks,
                              cudaStream_t stream);

// Bool mask (contiguous (rows, cols) bytes) -> packed (rows, row_bytes); vec: 8-byte loads are
// aligned (mask 8-byte aligned and rows == 1 or cols % 8 == 0).
cudaError_t launch_pack(const uint8_t* mask, uint8_t* out, int64_t rows, int64_t cols,
                        int64_t row_bytes, bool vec, int64_t max_blocks, cudaStream_t stream);

// Packed (contiguous (rows, row_bytes)) -> bool bytes (contiguous (rows, cols)); vec as above
// for the 8-byte stores.
cudaError_t launch_unpack(const uint8_t* packed, uint8_t* out, int64_t rows, int64_t cols,
                          int64_t row_bytes, bool vec, int64_t max_blocks, cudaStream_t stream);

// nvcc's __CUDA_ARCH_LIST__ for this build, e.g. "800,860,900".
const char* compiled_arch_list();

}  // namespace cuda
}  // namespace sparse_lottery
