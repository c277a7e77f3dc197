// The kernels of the sparse_lottery._C extension, registered with the dispatcher as the CPU and
// CUDA implementations of the torch.ops.sparse_lottery ops by registration.cpp.
//
// Masks: a bool tensor of the weight's shape, or the packed form (uint8, shape
// (rows, ceil(cols/8)) of the weight's GEMM view, bit b of byte c of row r = element (r, 8c+b),
// least significant bit first, padding bits zero). See mask_format.h.
// Every function accepts non-contiguous inputs and float32, bfloat16, float16 (and float64 on
// the CPU); CUDA functions run on at::cuda::getCurrentCUDAStream().
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace sparse_lottery {

// y = input @ (weight ⊙ mask)ᵀ + bias; input (..., K), weight (N, K) -> (..., N).
at::Tensor masked_linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& mask, const std::optional<at::Tensor>& bias);
// d_input = grad_output @ (weight ⊙ mask); grad_output (..., N) -> (..., K).
at::Tensor masked_linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                        const at::Tensor& mask);
// d_weight = (grad_outputᵀ @ input) ⊙ mask, exactly zero where pruned; -> (N, K).
at::Tensor masked_linear_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& mask);
// (d_input, d_weight, d_bias) in one call, each only where output_mask asks for it (undefined
// otherwise); weight is needed for d_input, input for d_weight; d_bias = Σ_batch grad_output.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const at::Tensor& mask,
    std::array<bool, 3> output_mask);
// tensor ⊙ mask, out of place.
at::Tensor apply_mask_cpu(const at::Tensor& tensor, const at::Tensor& mask);
// tensors[i] ⊙= masks[i], in place, for every i (one parallel pass over all tensors).
void apply_masks__cpu(std::vector<at::Tensor> tensors, std::vector<at::Tensor> masks);
// bool mask -> packed uint8; packed -> bool mask of `shape`.
at::Tensor pack_mask_cpu(const at::Tensor& mask);
at::Tensor unpack_mask_cpu(const at::Tensor& packed, std::vector<int64_t> shape);
// Selection (semantics in selection.h). magnitude_prune -> (new masks in the format of the given
// masks, bool where absent; thresholds float64 [groups]; removed int64 [groups]), the last two
// on the CPU. random_prune -> (new masks, removed int64 [groups]).
using MagnitudePruneResult = std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor>;
using RandomPruneResult = std::tuple<std::vector<at::Tensor>, at::Tensor>;
MagnitudePruneResult magnitude_prune_cpu(at::TensorList weights,
                                         const c10::List<std::optional<at::Tensor>>& masks,
                                         at::ArrayRef<double> amounts, bool counts,
                                         bool layerwise);
RandomPruneResult random_prune_cpu(at::TensorList masks, at::ArrayRef<double> amounts,
                                   bool counts, bool layerwise, int64_t seed);
// The mask as bools of `shape` (a bool mask is that already), through the dispatcher; the
// differentiable backwards under create_graph multiply by it. In masked_conv.cpp.
at::Tensor call_unpack_mask(const at::Tensor& mask, c10::SymIntArrayRef shape);
// masked_conv1d/2d (Dims = 1, 2): at::convolution of weight ⊙ mask on any device, and its
// autograd (d_weight masked); in masked_conv.cpp.
#define MASKED_CONV_ARGS                                                                 \
  const at::Tensor &input, const at::Tensor &weight, const at::Tensor &mask,             \
      const std::optional<at::Tensor>&bias, c10::SymIntArrayRef stride,                  \
      c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation, c10::SymInt groups
template <int Dims>
at::Tensor masked_conv(MASKED_CONV_ARGS);
template <int Dims>
at::Tensor masked_conv_autograd(MASKED_CONV_ARGS);

// Sparse execution (layout and checks in sparse_checks.h): y = input @ Wᵀ + bias with W given by
// its stored values and CSR/CSC index; the backward gives (d_input, d_values, d_bias), each only
// where output_mask asks for it; input is needed for d_values.
at::Tensor sparse_linear_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_offsets, const at::Tensor& col_indices,
                             const at::Tensor& col_offsets, const at::Tensor& row_indices,
                             const at::Tensor& csr_positions,
                             const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_linear_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
    const at::Tensor& col_offsets, const at::Tensor& row_indices,
    const at::Tensor& csr_positions, std::array<bool, 3> output_mask);

// Sparse convolution (NCHW, groups = 1, zero padding; W (N, C·kh·kw) as in sparse_linear, its
// column c = ci·kh·kw + i·kw + j): direct, no im2col; in cpu/sparse_conv.cpp.
at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_offsets, const at::Tensor& col_indices,
                             const at::Tensor& col_offsets, const at::Tensor& row_indices,
                             const at::Tensor& csr_positions,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& values,
    const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& col_offsets,
    const at::Tensor& row_indices, const at::Tensor& csr_positions, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask);

#ifdef WITH_CUDA
at::Tensor masked_linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& mask, const std::optional<at::Tensor>& bias);
at::Tensor masked_linear_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                         const at::Tensor& mask);
at::Tensor masked_linear_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                          const at::Tensor& mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cuda(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const at::Tensor& mask,
    std::array<bool, 3> output_mask);
at::Tensor apply_mask_cuda(const at::Tensor& tensor, const at::Tensor& mask);
void apply_masks__cuda(std::vector<at::Tensor> tensors, std::vector<at::Tensor> masks);
at::Tensor pack_mask_cuda(const at::Tensor& mask);
at::Tensor unpack_mask_cuda(const at::Tensor& packed, std::vector<int64_t> shape);
MagnitudePruneResult magnitude_prune_cuda(at::TensorList weights,
                                          const c10::List<std::optional<at::Tensor>>& masks,
                                          at::ArrayRef<double> amounts, bool counts,
                                          bool layerwise);
RandomPruneResult random_prune_cuda(at::TensorList masks, at::ArrayRef<double> amounts,
                                    bool counts, bool layerwise, int64_t seed);
std::string cuda_archs();
#endif

}  // namespace sparse_lottery
