// The packed mask format and the argument checks shared by the CPU and CUDA kernels.
// Mirrors sparse_lottery/_mask_format.py; messages name the argument, the expected and the received.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string>
#include <utility>

namespace sparse_lottery {

// The Python spelling of a dtype ("torch.float32"), so C++ and Python errors read the same.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kBool: return "torch.bool";
    case at::kByte: return "torch.uint8";
    default: return "torch." + std::string(c10::getDtypeNames(t).first);
  }
}

// (rows, cols) of the row-major GEMM view of `sizes`: (s0, prod(s1..)), (1, s0) for 1-D, (1, 1).
inline std::pair<int64_t, int64_t> gemm_view(at::IntArrayRef sizes) {
  if (sizes.empty()) return {1, 1};
  if (sizes.size() == 1) return {1, sizes[0]};
  int64_t cols = 1;
  for (size_t i = 1; i < sizes.size(); ++i) cols *= sizes[i];
  return {sizes[0], cols};
}

inline int64_t packed_row_bytes(int64_t cols) { return (cols + 7) / 8; }

// `mask` is a bool mask of `sizes` or its packed uint8 form; returns true when packed.
inline bool check_mask(const at::Tensor& mask, at::IntArrayRef sizes, const char* name = "mask",
                       const char* of = "weight") {
  if (mask.scalar_type() == at::kBool) {
    TORCH_CHECK(mask.sizes() == sizes, name, ": expected a bool mask of ", of, "'s shape ", sizes,
                ", got shape ", mask.sizes());
    return false;
  }
  TORCH_CHECK(mask.scalar_type() == at::kByte, name,
              ": expected dtype torch.bool (one flag per weight) or torch.uint8 (packed by "
              "sparse_lottery.pack_mask), got ", dtype_name(mask.scalar_type()));
  auto [rows, cols] = gemm_view(sizes);
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == rows && mask.size(1) == packed_row_bytes(cols),
              name, ": expected a packed uint8 mask of shape [", rows, ", ",
              packed_row_bytes(cols), "] for ", of, " of shape ", sizes, ", got shape ",
              mask.sizes());
  return true;
}

inline void check_same_device(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected device ", ref.device(),
              " (the device of ", ref_name, "), got ", t.device());
}

inline void check_same_dtype(const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                             const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ",
              dtype_name(ref.scalar_type()), " (the dtype of ", ref_name, "), got ",
              dtype_name(t.scalar_type()));
}

inline void check_masked_linear(const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2, "weight: expected a 2-D tensor (out_features, in_features), got ",
              weight.dim(), "-D of shape ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()),
              "weight: expected a floating dtype, got ", dtype_name(weight.scalar_type()));
  check_same_device(weight, "weight", input, "input");
  check_same_dtype(weight, "weight", input, "input");
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) == weight.size(1),
              "input: expected last dimension in_features=", weight.size(1), " (weight is ",
              weight.sizes(), "), got shape ", input.sizes());
  check_same_device(weight, "weight", mask, "mask");
  check_mask(mask, weight.sizes());
  if (bias.has_value()) {
    check_same_device(weight, "weight", *bias, "bias");
    check_same_dtype(weight, "weight", *bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "bias: expected shape [", weight.size(0), "] (out_features), got ", bias->sizes());
  }
}

// masked_linear_grad_input(grad_output (..., N), weight (N, K), mask).
inline void check_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                             const at::Tensor& mask) {
  TORCH_CHECK(weight.dim() == 2, "weight: expected a 2-D tensor (out_features, in_features), got ",
              weight.dim(), "-D of shape ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), "weight: expected a floating dtype, got ",
              dtype_name(weight.scalar_type()));
  check_same_device(weight, "weight", grad_output, "grad_output");
  check_same_dtype(weight, "weight", grad_output, "grad_output");
  TORCH_CHECK(grad_output.dim() >= 1 && grad_output.size(-1) == weight.size(0),
              "grad_output: expected last dimension out_features=", weight.size(0),
              " (weight is ", weight.sizes(), "), got shape ", grad_output.sizes());
  check_same_device(weight, "weight", mask, "mask");
  check_mask(mask, weight.sizes());
}

// masked_linear_grad_weight(grad_output (..., N), input (..., K), mask of (N, K));
// returns true when the mask is packed.
inline bool check_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                              const at::Tensor& mask) {
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "input: expected a floating dtype, got ",
              dtype_name(input.scalar_type()));
  check_same_device(input, "input", grad_output, "grad_output");
  check_same_dtype(input, "input", grad_output, "grad_output");
  TORCH_CHECK(input.dim() >= 1, "input: expected at least 1 dimension, got a scalar");
  const at::IntArrayRef batch = input.sizes().slice(0, input.dim() - 1);
  TORCH_CHECK(grad_output.dim() == input.dim() &&
                  grad_output.sizes().slice(0, grad_output.dim() - 1) == batch,
              "grad_output: expected batch dimensions ", batch, " (input's), got shape ",
              grad_output.sizes());
  check_same_device(input, "input", mask, "mask");
  return check_mask(mask, {grad_output.size(-1), input.size(-1)}, "mask", "grad_weight");
}

// masked_linear_backward(grad_output (..., N), input (..., K)?, weight (N, K)?, mask,
// output_mask): weight is needed for grad_input (output_mask[0]), input for grad_weight
// (output_mask[1]); each one given is checked as its own gradient op checks it.
inline void check_backward(const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
                           const std::optional<at::Tensor>& weight, const at::Tensor& mask,
                           std::array<bool, 3> output_mask) {
  TORCH_CHECK(!output_mask[0] || weight.has_value(),
              "weight: required for grad_input (output_mask[0] is set), got None");
  TORCH_CHECK(!output_mask[1] || input.has_value(),
              "input: required for grad_weight (output_mask[1] is set), got None");
  TORCH_CHECK(at::isFloatingType(grad_output.scalar_type()) && grad_output.dim() >= 1,
              "grad_output: expected a floating tensor of at least 1 dimension, got ",
              dtype_name(grad_output.scalar_type()), " of shape ", grad_output.sizes());
  if (weight.has_value()) check_grad_input(grad_output, *weight, mask);
  if (input.has_value()) check_grad_weight(grad_output, *input, mask);
  if (weight.has_value() && input.has_value()) {
    TORCH_CHECK(input->size(-1) == weight->size(1), "input: expected last dimension in_features=",
                weight->size(1), " (weight is ", weight->sizes(), "), got shape ", input->sizes());
  }
}

}  // namespace sparse_lottery
