// The launch tables of the multi-tensor CUDA kernels (apply_masks_, masked_sgd_, masked_adamw_).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace sparse_lottery {
namespace cuda {

// `jobs` then `chunks` as one int64 tensor on `device`, through one pinned host buffer and one
// asynchronous copy on the current stream; the caching host allocator keeps the block until the
// copy has run, and the device table is freed in stream order.
inline at::Tensor device_table(const std::vector<int64_t>& jobs,
                               const std::vector<int64_t>& chunks, at::Device device) {
  const int64_t n = static_cast<int64_t>(jobs.size() + chunks.size());
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  std::copy(jobs.begin(), jobs.end(), h);
  std::copy(chunks.begin(), chunks.end(), h + jobs.size());
  at::Tensor table = at::empty({n}, at::TensorOptions().dtype(at::kLong).device(device));
  table.copy_(host, /*non_blocking=*/true);
  return table;
}

}  // namespace cuda
}  // namespace sparse_lottery
