// Argument checks of the sparse-execution ops (sparse_linear, sparse_conv2d and their
// backwards), shared by the CPU and CUDA kernels; mirrors sparse_lottery/_sparse_checks.py, with
// the same messages and exception types.
//
// The layout of W (N×K, nnz stored weights), built by sparse_lottery.sparse.SparseLayout:
//   row_offsets [N+1] int64, col_indices [nnz] int32      (CSR: the order of `values`)
//   col_offsets [K+1] int64, row_indices [nnz] int32,
//   csr_positions [nnz] int32                             (CSC: entry j is values[csr_positions[j]])
// The checks here are O(1); the indices themselves are validated where a layout is built.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

#include "mask_format.h"

namespace sparse_lottery {

inline void check_index(const at::Tensor& t, const char* name, at::ScalarType dtype,
                        int64_t numel, const char* what, const at::Tensor& values) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype_name(dtype),
                   ", got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == numel, name, ": expected a 1-D tensor of ",
                    numel, " entries (", what, "), got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor");
  check_same_device(values, "values", t, name);
}

// Returns (N, K) = (out_features, in_features), from the offsets' lengths.
inline std::array<int64_t, 2> check_sparse_layout(const at::Tensor& values,
                                                  const at::Tensor& row_offsets,
                                                  const at::Tensor& col_indices,
                                                  const at::Tensor& col_offsets,
                                                  const at::Tensor& row_indices,
                                                  const at::Tensor& csr_positions) {
  TORCH_CHECK_TYPE(at::isFloatingType(values.scalar_type()),
                   "values: expected a floating dtype, got ", dtype_name(values.scalar_type()));
  TORCH_CHECK_VALUE(values.dim() == 1 && values.is_contiguous(),
                    "values: expected a contiguous 1-D tensor (the stored weights), got shape ",
                    values.sizes());
  TORCH_CHECK_VALUE(row_offsets.dim() == 1 && row_offsets.numel() >= 1,
                    "row_offsets: expected a 1-D tensor of out_features + 1 entries, got shape ",
                    row_offsets.sizes());
  TORCH_CHECK_VALUE(col_offsets.dim() == 1 && col_offsets.numel() >= 1,
                    "col_offsets: expected a 1-D tensor of in_features + 1 entries, got shape ",
                    col_offsets.sizes());
  const int64_t nnz = values.numel(), out_features = row_offsets.numel() - 1;
  const int64_t in_features = col_offsets.numel() - 1;
  check_index(row_offsets, "row_offsets", at::kLong, out_features + 1, "out_features + 1",
              values);
  check_index(col_indices, "col_indices", at::kInt, nnz, "one per stored weight", values);
  check_index(col_offsets, "col_offsets", at::kLong, in_features + 1, "in_features + 1",
              values);
  check_index(row_indices, "row_indices", at::kInt, nnz, "one per stored weight", values);
  check_index(csr_positions, "csr_positions", at::kInt, nnz, "one per stored weight", values);
  return {out_features, in_features};
}

inline void check_sparse_operand(const at::Tensor& t, const char* name, const at::Tensor& values,
                                 int64_t last, const char* last_name) {
  check_same_device(values, "values", t, name);
  check_same_dtype(values, "values", t, name);
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(-1) == last, name, ": expected last dimension ",
                    last_name, "=", last, ", got shape ", t.sizes());
}

// An optional bias: values' device and dtype, shape [n] (`what` names n).
inline void check_sparse_bias(const std::optional<at::Tensor>& bias, const at::Tensor& values,
                              int64_t n, const char* what) {
  if (!bias.has_value()) return;
  check_same_device(values, "values", *bias, "bias");
  check_same_dtype(values, "values", *bias, "bias");
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, "bias: expected shape [", n, "] (",
                    what, "), got ", bias->sizes());
}

// sparse_linear(input (..., K), values, layout, bias [N]?); returns N.
inline int64_t check_sparse_linear(const at::Tensor& input, const at::Tensor& values,
                                   const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                   const at::Tensor& col_offsets, const at::Tensor& row_indices,
                                   const at::Tensor& csr_positions,
                                   const std::optional<at::Tensor>& bias) {
  const auto [N, K] = check_sparse_layout(values, row_offsets, col_indices, col_offsets,
                                          row_indices, csr_positions);
  check_sparse_operand(input, "input", values, K, "in_features");
  check_sparse_bias(bias, values, N, "out_features");
  return N;
}

// sparse_linear_backward(grad_output (..., N), input (..., K)?, values, layout, output_mask);
// input is needed for grad_values (output_mask[1]). Returns (N, K).
inline std::array<int64_t, 2> check_sparse_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
    const at::Tensor& col_offsets, const at::Tensor& row_indices,
    const at::Tensor& csr_positions, std::array<bool, 3> output_mask) {
  TORCH_CHECK_VALUE(!output_mask[1] || input.has_value(),
                    "input: required for grad_values (output_mask[1] is set), got None");
  const auto [N, K] = check_sparse_layout(values, row_offsets, col_indices, col_offsets,
                                          row_indices, csr_positions);
  check_sparse_operand(grad_output, "grad_output", values, N, "out_features");
  if (input.has_value()) {
    check_sparse_operand(*input, "input", values, K, "in_features");
    TORCH_CHECK_VALUE(input->sizes().slice(0, input->dim() - 1) ==
                          grad_output.sizes().slice(0, grad_output.dim() - 1),
                      "input: expected batch dimensions ",
                      grad_output.sizes().slice(0, grad_output.dim() - 1),
                      " (grad_output's), got shape ", input->sizes());
  }
  return {N, K};
}

// The geometry of a sparse_conv2d: input (batch, C, H, W) -> output (batch, N, OH, OW); W is
// viewed as (N, K = C·kh·kw), column c = ci·kh·kw + i·kw + j.
struct ConvShape {
  int64_t N, K, batch, C, H, W, kh, kw, OH, OW;
};

inline void check_conv_param(at::IntArrayRef p, const char* name, int64_t min) {
  TORCH_CHECK_VALUE(p.size() == 2, name, ": expected 2 values, got ", p);
  TORCH_CHECK_VALUE(p[0] >= min && p[1] >= min, name, ": expected values >= ", min, ", got ", p);
}

// floor(a / b) for b > 0 (C++ division truncates towards zero).
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// One spatial dimension of a convolution's output (negative or zero when the padded input is
// smaller than the dilated kernel).
inline int64_t conv_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding,
                                int64_t dilation) {
  return floor_div(size + 2 * padding - dilation * (kernel - 1) - 1, stride) + 1;
}

// sparse_conv2d(input (batch, C, H, W), values, layout, bias [N]?, kernel_size, stride, padding,
// dilation): groups = 1, zero padding.
inline ConvShape check_sparse_conv2d(const at::Tensor& input, const at::Tensor& values,
                                     const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                     const at::Tensor& col_offsets, const at::Tensor& row_indices,
                                     const at::Tensor& csr_positions,
                                     const std::optional<at::Tensor>& bias,
                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto [N, K] = check_sparse_layout(values, row_offsets, col_indices, col_offsets,
                                          row_indices, csr_positions);
  check_conv_param(kernel_size, "kernel_size", 1);
  check_conv_param(stride, "stride", 1);
  check_conv_param(padding, "padding", 0);
  check_conv_param(dilation, "dilation", 1);
  check_same_device(values, "values", input, "input");
  check_same_dtype(values, "values", input, "input");
  TORCH_CHECK_VALUE(input.dim() == 4,
                    "input: expected a 4-D tensor (batch, channels, height, width), got shape ",
                    input.sizes());
  const int64_t kh = kernel_size[0], kw = kernel_size[1];
  TORCH_CHECK_VALUE(input.size(1) * kh * kw == K, "input: expected channels·kh·kw = in_features=",
                    K, " (kernel_size ", kernel_size, "), got shape ", input.sizes());
  const int64_t H = input.size(2), W = input.size(3);
  const int64_t OH = conv_output_size(H, kh, stride[0], padding[0], dilation[0]);
  const int64_t OW = conv_output_size(W, kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK_VALUE(OH >= 0 && OW >= 0, "input: height and width ", input.sizes().slice(2),
                    " (padded) are smaller than the dilated kernel");
  check_sparse_bias(bias, values, N, "out_channels");
  return {N, K, input.size(0), input.size(1), H, W, kh, kw, OH, OW};
}

// sparse_conv2d_backward(grad_output (batch, N, OH, OW), input, values, layout, kernel_size,
// stride, padding, dilation, output_mask).
inline ConvShape check_sparse_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& values,
    const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& col_offsets,
    const at::Tensor& row_indices, const at::Tensor& csr_positions, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvShape s =
      check_sparse_conv2d(input, values, row_offsets, col_indices, col_offsets, row_indices,
                          csr_positions, std::nullopt, kernel_size, stride, padding, dilation);
  check_same_device(values, "values", grad_output, "grad_output");
  check_same_dtype(values, "values", grad_output, "grad_output");
  const std::array<int64_t, 4> expected = {s.batch, s.N, s.OH, s.OW};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected),
                    "grad_output: expected shape ", at::IntArrayRef(expected),
                    " (batch, out_channels, out_height, out_width), got ", grad_output.sizes());
  return s;
}

}  // namespace sparse_lottery
