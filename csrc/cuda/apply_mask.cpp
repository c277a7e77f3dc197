// apply_mask (out of place) and apply_masks_ (in place, many tensors in one launch) on CUDA:
// one bandwidth-bound pass each, kernels in mask_kernels.cu.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "cuda/common.h"
#include "cuda/table.h"
#include "sparse_lottery.h"

namespace sparse_lottery {
namespace cuda {

void mask_into(const at::Tensor& src, const at::Tensor& mask, bool packed, const at::Tensor& dst) {
  TORCH_INTERNAL_ASSERT(src.is_contiguous() && dst.is_contiguous() && mask.is_contiguous());
  TORCH_INTERNAL_ASSERT(src.sizes() == dst.sizes() && src.dtype() == dst.dtype());
  if (src.numel() == 0) return;
  const Walk w = walk_of(src, mask, packed);
  const int64_t elem = src.element_size();
  const bool vec = vec_ok(src.data_ptr(), dst.data_ptr(), mask.data_ptr(), packed, w, elem);
  C10_CUDA_CHECK(launch_mask(src.data_ptr(), dst.data_ptr(),
                             static_cast<const uint8_t*>(mask.data_ptr()), static_cast<int>(elem),
                             packed, w.rows, w.cols, w.mask_ld, vec, max_blocks(),
                             c10::cuda::getCurrentCUDAStream()));
}

}  // namespace cuda

at::Tensor apply_mask_cuda(const at::Tensor& tensor, const at::Tensor& mask) {
  cuda::check_cuda(tensor, "tensor");
  check_same_device(tensor, "tensor", mask, "mask");
  const bool packed = check_mask(mask, tensor.sizes(), "mask", "tensor");
  cuda::check_elem_size(tensor, "tensor");
  const c10::cuda::CUDAGuard guard(tensor.device());
  const at::Tensor m = mask.contiguous();
  if (tensor.is_contiguous()) {
    at::Tensor out = at::empty_like(tensor, at::MemoryFormat::Contiguous);
    cuda::mask_into(tensor, m, packed, out);
    return out;
  }
  at::Tensor out = tensor.contiguous();  // already a fresh buffer: mask it in place
  cuda::mask_into(out, m, packed, out);
  return out;
}

// One launch for all tensors, whatever their dtypes: a device table of jobs (pointer, mask,
// shape, element size, mask kind) and chunks (one block each), copied from pinned memory.
// Non-contiguous tensors are masked in a contiguous copy that is copied back.
void apply_masks__cuda(std::vector<at::Tensor> tensors, std::vector<at::Tensor> masks) {
  using namespace cuda;
  TORCH_CHECK(tensors.size() == masks.size(), "masks: expected ", tensors.size(),
              " masks (one per tensor), got ", masks.size());
  if (tensors.empty()) return;
  check_cuda(tensors[0], "tensors[0]");
  const at::Device device = tensors[0].device();
  const c10::cuda::CUDAGuard guard(device);

  std::vector<at::Tensor> keep_alive;  // contiguous copies and masks, until the launch is queued
  std::vector<std::pair<at::Tensor, at::Tensor>> copy_back;  // (original, contiguous copy)
  std::vector<int64_t> jobs, chunks;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string tn = "tensors[" + std::to_string(i) + "]";
    const std::string mn = "masks[" + std::to_string(i) + "]";
    const at::Tensor& t = tensors[i];
    check_same_device(tensors[0], "tensors[0]", t, tn.c_str());
    check_same_device(t, tn.c_str(), masks[i], mn.c_str());
    const bool packed = check_mask(masks[i], t.sizes(), mn.c_str(), tn.c_str());
    check_elem_size(t, tn.c_str());
    if (t.numel() == 0) continue;
    at::Tensor data = t.is_contiguous() ? t : t.contiguous();
    if (!t.is_contiguous()) copy_back.emplace_back(t, data);
    at::Tensor m = masks[i].contiguous();
    const Walk w = walk_of(data, m, packed);
    const int64_t elem = data.element_size();
    const int64_t v = kVecBytes / elem;
    const int64_t gpr = (w.cols + v - 1) / v;
    const int64_t groups = w.rows * gpr;
    const bool vec = vec_ok(data.data_ptr(), data.data_ptr(), m.data_ptr(), packed, w, elem);
    const int64_t job = static_cast<int64_t>(jobs.size()) / kJobFields;
    jobs.insert(jobs.end(), {reinterpret_cast<int64_t>(data.data_ptr()),
                             reinterpret_cast<int64_t>(m.data_ptr()), w.cols, w.mask_ld, gpr,
                             groups, elem | (int64_t(packed) << 8) | (int64_t(vec) << 9)});
    for (int64_t g = 0; g < groups; g += kChunkGroups) chunks.insert(chunks.end(), {job, g});
    keep_alive.push_back(std::move(data));
    keep_alive.push_back(std::move(m));
  }
  const int64_t n_chunks = static_cast<int64_t>(chunks.size()) / 2;
  if (n_chunks == 0) return;
  TORCH_CHECK(n_chunks < (int64_t(1) << 31), "tensors: too many elements for one launch");

  const at::Tensor table = device_table(jobs, chunks, device);
  const int64_t* d = table.data_ptr<int64_t>();
  C10_CUDA_CHECK(
      launch_multi_mask(d, d + jobs.size(), n_chunks, c10::cuda::getCurrentCUDAStream()));
  for (auto& [orig, data] : copy_back) orig.copy_(data);
}

}  // namespace sparse_lottery
