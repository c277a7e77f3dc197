// The masked optimiser ops masked_sgd_ and masked_adamw_ (CPU: cpu/masked_optim.cpp, CUDA:
// cuda/optim_ops.cpp + cuda/masked_optim.cu), and their argument checks, shared by both devices
// and mirrored by sparse_lottery/_mask_format.py (check_masked_sgd, check_masked_adamw).
//
// Every list holds one tensor per parameter (momentum_buffers: none when momentum == 0); grads
// and states have the parameter's shape, dtype and device; masks[i] is None (every entry
// survives), a bool mask of params[i]'s shape or its packed uint8 form (mask_format.h). Only
// surviving entries of parameters and states are read and written: pruned ones keep their
// values, bit for bit. Maths in float32 for float32/bfloat16/float16, float64 for float64
// (optim_math.h); states are stored in the parameter's dtype, as torch.optim does.
// Non-contiguous tensors are updated through a contiguous copy that is written back.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mask_format.h"

namespace sparse_lottery {

using OptionalTensors = c10::List<std::optional<at::Tensor>>;

void masked_sgd__cpu(at::TensorList params, at::TensorList grads,
                     at::TensorList momentum_buffers, const OptionalTensors& masks, double lr,
                     double momentum, double dampening, double weight_decay, bool nesterov,
                     bool maximize, bool first_step);
void masked_adamw__cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                       at::TensorList exp_avg_sqs, const OptionalTensors& masks, double lr,
                       double beta1, double beta2, double eps, double weight_decay, int64_t step,
                       bool maximize);
#ifdef WITH_CUDA
void masked_sgd__cuda(at::TensorList params, at::TensorList grads,
                      at::TensorList momentum_buffers, const OptionalTensors& masks, double lr,
                      double momentum, double dampening, double weight_decay, bool nesterov,
                      bool maximize, bool first_step);
void masked_adamw__cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, const OptionalTensors& masks, double lr,
                        double beta1, double beta2, double eps, double weight_decay,
                        int64_t step, bool maximize);
#endif

namespace optim {

inline std::string item(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// `t` (named `name`) has the shape, dtype and device of `ref` (named `ref_name`).
inline void check_like(const at::Tensor& ref, const std::string& ref_name, const at::Tensor& t,
                       const std::string& name) {
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, name, ": expected a dense (strided) tensor, got ",
                   t.layout());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ",
                   dtype_name(ref.scalar_type()), " (the dtype of ", ref_name, "), got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected device ", ref.device(),
                    " (the device of ", ref_name, "), got ", t.device());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), name, ": expected shape ", ref.sizes(),
                    " (the shape of ", ref_name, "), got ", t.sizes());
}

// All the checks of one optimiser call; `states` are (name, list) of the per-parameter state
// lists. Returns, per parameter, whether its mask is packed (false for None or bool).
inline std::vector<bool> check_lists(
    at::TensorList params, at::TensorList grads,
    std::initializer_list<std::pair<const char*, at::TensorList>> states,
    const OptionalTensors& masks) {
  const size_t n = params.size();
  TORCH_CHECK_VALUE(grads.size() == n, "grads: expected ", n, " tensors (one per parameter), got ",
                    grads.size());
  TORCH_CHECK_VALUE(masks.size() == n, "masks: expected ", n,
                    " masks (one per parameter, or None), got ", masks.size());
  for (const auto& [name, list] : states)
    TORCH_CHECK_VALUE(list.size() == n, name, ": expected ", n,
                      " tensors (one per parameter), got ", list.size());
  std::vector<bool> packed(n, false);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const std::string pn = item("params", i);
    TORCH_CHECK_TYPE(p.layout() == at::kStrided, pn, ": expected a dense (strided) tensor, got ",
                     p.layout());
    TORCH_CHECK_TYPE(at::isFloatingType(p.scalar_type()) && p.element_size() >= 2, pn,
                     ": expected a floating dtype in [torch.float32, torch.bfloat16, "
                     "torch.float16, torch.float64], got ", dtype_name(p.scalar_type()));
    TORCH_CHECK_VALUE(p.device() == params[0].device(), pn, ": expected device ",
                      params[0].device(), " (the device of params[0]), got ", p.device());
    check_like(p, pn, grads[i], item("grads", i));
    for (const auto& [name, list] : states) check_like(p, pn, list[i], item(name, i));
    const std::optional<at::Tensor> m = masks[i];
    if (!m.has_value()) continue;
    const std::string mn = item("masks", i);
    TORCH_CHECK_TYPE(m->scalar_type() == at::kBool || m->scalar_type() == at::kByte, mn,
                     ": expected dtype torch.bool (one flag per weight) or torch.uint8 (packed "
                     "by sparse_lottery.pack_mask), got ", dtype_name(m->scalar_type()));
    TORCH_CHECK_VALUE(m->device() == p.device(), mn, ": expected device ", p.device(),
                      " (the device of ", pn, "), got ", m->device());
    packed[i] = m->scalar_type() == at::kByte;
    const auto [rows, cols] = gemm_view(p.sizes());
    if (packed[i]) {
      TORCH_CHECK_VALUE(m->dim() == 2 && m->size(0) == rows && m->size(1) == packed_row_bytes(cols),
                        mn, ": expected a packed uint8 mask of shape [", rows, ", ",
                        packed_row_bytes(cols), "] for ", pn, " of shape ", p.sizes(),
                        ", got shape ", m->sizes());
    } else {
      TORCH_CHECK_VALUE(m->sizes() == p.sizes(), mn, ": expected a bool mask of ", pn,
                        "'s shape ", p.sizes(), ", got shape ", m->sizes());
    }
  }
  return packed;
}

// Returns the state lists: the momentum buffers, or none when momentum is 0.
inline std::vector<at::TensorList> check_sgd(at::TensorList params, at::TensorList grads,
                                             at::TensorList buffers, const OptionalTensors& masks,
                                             double momentum, double dampening, bool nesterov) {
  TORCH_CHECK_VALUE(momentum != 0.0 || buffers.empty(),
                    "momentum_buffers: expected none when momentum is 0, got ", buffers.size());
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0.0 && dampening == 0.0),
                    "nesterov: expected momentum > 0 and dampening == 0, got momentum ",
                    momentum, " and dampening ", dampening);
  if (momentum == 0.0) {
    check_lists(params, grads, {}, masks);
    return {};
  }
  check_lists(params, grads, {{"momentum_buffers", buffers}}, masks);
  return {buffers};
}

// Returns the state lists: exp_avgs, exp_avg_sqs.
inline std::vector<at::TensorList> check_adamw(at::TensorList params, at::TensorList grads,
                                               at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                               const OptionalTensors& masks, int64_t step) {
  TORCH_CHECK_VALUE(step >= 1, "step: expected the step count after this step, >= 1, got ",
                    step);
  check_lists(params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, masks);
  return {exp_avgs, exp_avg_sqs};
}

}  // namespace optim
}  // namespace sparse_lottery
