// masked_sgd_ and masked_adamw_ on CUDA, host side (kernels: masked_optim.cu): checks, then one
// launch over a device table of jobs (one per parameter) and chunks (one block each), copied
// from pinned memory as apply_masks_ does. Non-contiguous tensors are updated in a contiguous
// copy that is copied back.
#include <array>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "cuda/common.h"
#include "cuda/optim_launch.h"
#include "cuda/table.h"
#include "masked_optim.h"

namespace sparse_lottery {
namespace {

int64_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::kOptF32;
    case at::kDouble: return cuda::kOptF64;
    case at::kHalf: return cuda::kOptF16;
    default: return cuda::kOptBF16;
  }
}

// The device table of one call; launch(f) queues f(jobs, chunks, n_chunks, stream), f being a
// launcher of optim_launch.h with its hyperparameters bound, then the copies back.
class Table {
 public:
  Table(at::TensorList params, at::TensorList grads, std::vector<at::TensorList> states,
        const OptionalTensors& masks)
      : device_(params[0].device()) {
    for (size_t i = 0; i < params.size(); ++i) {
      cuda::check_cuda(params[i], optim::item("params", i).c_str());
      const at::Tensor& p = params[i];
      if (p.numel() == 0) continue;
      std::array<int64_t, 4> ptr{0, 0, 0, 0};
      ptr[0] = address(writable(p));
      ptr[1] = address(keep(grads[i].contiguous()));
      for (size_t s = 0; s < states.size(); ++s) ptr[2 + s] = address(writable(states[s][i]));
      const std::optional<at::Tensor> m = masks[i];
      const bool packed = m.has_value() && m->scalar_type() == at::kByte;
      const int64_t mask = m.has_value() ? address(keep(m->contiguous())) : 0;
      const int64_t cols = gemm_view(p.sizes()).second;
      const int64_t job = static_cast<int64_t>(jobs_.size()) / cuda::kOptimJobFields;
      jobs_.insert(jobs_.end(), {ptr[0], ptr[1], ptr[2], ptr[3], mask, cols,
                                 packed ? m->size(1) : 0, p.numel(),
                                 dtype_code(p.scalar_type()) | (int64_t(packed) << 8)});
      for (int64_t e = 0; e < p.numel(); e += cuda::kOptimChunk)
        chunks_.insert(chunks_.end(), {job, e});
    }
  }

  template <typename F>
  void launch(F&& f) {
    const int64_t n_chunks = static_cast<int64_t>(chunks_.size()) / 2;
    if (n_chunks == 0) return;
    TORCH_CHECK(n_chunks < (int64_t(1) << 31), "params: too many elements for one launch");
    const c10::cuda::CUDAGuard guard(device_);
    const at::Tensor table = cuda::device_table(jobs_, chunks_, device_);
    const int64_t* d = table.data_ptr<int64_t>();
    C10_CUDA_CHECK(f(d, d + jobs_.size(), n_chunks, c10::cuda::getCurrentCUDAStream()));
    for (auto& [orig, copy] : copy_back_) orig.copy_(copy);
  }

 private:
  static int64_t address(const at::Tensor& t) { return reinterpret_cast<int64_t>(t.data_ptr()); }

  const at::Tensor& keep(at::Tensor t) {
    alive_.push_back(std::move(t));
    return alive_.back();
  }

  const at::Tensor& writable(const at::Tensor& t) {
    if (t.is_contiguous()) return t;
    copy_back_.emplace_back(t, t.contiguous());
    return copy_back_.back().second;
  }

  at::Device device_;
  std::vector<int64_t> jobs_, chunks_;
  std::deque<at::Tensor> alive_;  // contiguous grads and masks, until the launch is queued
  std::deque<std::pair<at::Tensor, at::Tensor>> copy_back_;  // (original, contiguous copy)
};

}  // namespace

void masked_sgd__cuda(at::TensorList params, at::TensorList grads,
                      at::TensorList momentum_buffers, const OptionalTensors& masks, double lr,
                      double momentum, double dampening, double weight_decay, bool nesterov,
                      bool maximize, bool first_step) {
  auto states =
      optim::check_sgd(params, grads, momentum_buffers, masks, momentum, dampening, nesterov);
  if (params.empty()) return;
  const optim::SgdHyper h{lr, momentum, dampening, weight_decay, nesterov, maximize, first_step};
  Table(params, grads, std::move(states), masks)
      .launch([&](const int64_t* jobs, const int64_t* chunks, int64_t n, cudaStream_t stream) {
        return cuda::launch_masked_sgd(jobs, chunks, n, h, stream);
      });
}

void masked_adamw__cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, const OptionalTensors& masks, double lr,
                        double beta1, double beta2, double eps, double weight_decay,
                        int64_t step, bool maximize) {
  auto states = optim::check_adamw(params, grads, exp_avgs, exp_avg_sqs, masks, step);
  if (params.empty()) return;
  const optim::AdamHyper h{lr, beta1, beta2, eps, weight_decay, step, maximize};
  Table(params, grads, std::move(states), masks)
      .launch([&](const int64_t* jobs, const int64_t* chunks, int64_t n, cudaStream_t stream) {
        return cuda::launch_masked_adamw(jobs, chunks, n, h, stream);
      });
}

}  // namespace sparse_lottery
