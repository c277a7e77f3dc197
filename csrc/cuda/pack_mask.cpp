// pack_mask / unpack_mask on CUDA (kernels in pack_kernels.cu), and cuda_archs().
//
// Packed format (mask_format.h): uint8 (rows, ceil(cols / 8)) of the GEMM view, bit b of byte c
// of row r = element (r, 8c + b), least significant bit first, padding bits zero.
#include <sstream>
#include <string>
#include <vector>

#include "cuda/common.h"
#include "sparse_lottery.h"

namespace sparse_lottery {

at::Tensor pack_mask_cuda(const at::Tensor& mask) {
  using namespace cuda;
  check_cuda(mask, "mask");
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask: expected dtype torch.bool, got ",
              dtype_name(mask.scalar_type()));
  const c10::cuda::CUDAGuard guard(mask.device());
  const auto [rows, cols] = gemm_view(mask.sizes());
  const int64_t row_bytes = packed_row_bytes(cols);
  at::Tensor out = at::empty({rows, row_bytes}, mask.options().dtype(at::kByte));
  if (out.numel() == 0) return out;
  const at::Tensor m = mask.contiguous();
  const auto* src = static_cast<const uint8_t*>(m.data_ptr());
  const bool vec = aligned(src, 8) && (rows == 1 || cols % 8 == 0);
  C10_CUDA_CHECK(launch_pack(src, static_cast<uint8_t*>(out.data_ptr()), rows, cols, row_bytes,
                             vec, max_blocks(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor unpack_mask_cuda(const at::Tensor& packed, std::vector<int64_t> shape) {
  using namespace cuda;
  check_cuda(packed, "packed");
  TORCH_CHECK(packed.scalar_type() == at::kByte, "packed: expected dtype torch.uint8, got ",
              dtype_name(packed.scalar_type()));
  for (const int64_t s : shape) {
    TORCH_CHECK(s >= 0, "shape: expected non-negative sizes, got ", at::IntArrayRef(shape));
  }
  const auto [rows, cols] = gemm_view(shape);
  const int64_t row_bytes = packed_row_bytes(cols);
  TORCH_CHECK(packed.dim() == 2 && packed.size(0) == rows && packed.size(1) == row_bytes,
              "packed: expected shape [", rows, ", ", row_bytes, "] for a mask of shape ",
              at::IntArrayRef(shape), ", got ", packed.sizes());
  const c10::cuda::CUDAGuard guard(packed.device());
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  const at::Tensor p = packed.contiguous();
  auto* dst = static_cast<uint8_t*>(out.data_ptr());
  const bool vec = aligned(dst, 8) && (rows == 1 || cols % 8 == 0);
  C10_CUDA_CHECK(launch_unpack(static_cast<const uint8_t*>(p.data_ptr()), dst, rows, cols,
                               row_bytes, vec, max_blocks(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

// The real architectures the device code was compiled for, from nvcc's __CUDA_ARCH_LIST__
// ("800,860,900" -> "sm_80 sm_86 sm_90"). TORCH_CUDA_ARCH_LIST's "+PTX" adds PTX of the last.
std::string cuda_archs() {
  std::stringstream in(cuda::compiled_arch_list());
  std::string item, out;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    out += (out.empty() ? "sm_" : " sm_") + std::to_string(std::stoi(item) / 10);
  }
  return out.empty() ? "unknown" : out;
}

}  // namespace sparse_lottery
