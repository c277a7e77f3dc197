// masked_linear and its two gradients on CUDA: a fused mask pass + cuBLAS.
//
//   y  = x @ (W ⊙ M)ᵀ + b      pre-pass W ⊙ M -> scratch, then addmm / mm (cuBLAS, cuBLASLt)
//   dX = dY @ (W ⊙ M)          pre-pass W ⊙ M -> scratch, then mm
//   dW = (dYᵀ @ X) ⊙ M          mm, then the mask applied in place to its fresh output
//   db = Σ_batch dY             masked_linear_backward: the three above in one call
//
// The pre-pass (mask_kernels.cu) reads W (any float dtype) and the bool or packed mask once with
// 128-bit accesses and writes the masked operand into a scratch tensor from the caching
// allocator, released (stream-ordered) when the call returns: no masked copy outlives it. When
// W is not contiguous its contiguous copy is the scratch and is masked in place (no extra pass).
// Everything runs on the current stream; fp32 GEMMs follow torch.backends.cuda.matmul.allow_tf32
// as any at::mm does.
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/common.h"
#include "sparse_lottery.h"

namespace sparse_lottery {
namespace {

// Scratch (N, K), contiguous: weight ⊙ mask.
at::Tensor masked_weight(const at::Tensor& weight, const at::Tensor& mask) {
  const bool packed = mask.scalar_type() == at::kByte;
  const at::Tensor m = mask.contiguous();
  if (weight.is_contiguous()) {
    at::Tensor out = at::empty_like(weight, at::MemoryFormat::Contiguous);
    cuda::mask_into(weight, m, packed, out);
    return out;
  }
  at::Tensor out = weight.contiguous();
  cuda::mask_into(out, m, packed, out);
  return out;
}

// (batch, last) view of t (a copy only when its batch dimensions cannot be merged); not -1,
// since t may have no elements.
at::Tensor rows_of(const at::Tensor& t, int64_t last) {
  int64_t batch = 1;
  for (int64_t i = 0; i + 1 < t.dim(); ++i) batch *= t.size(i);
  return t.reshape({batch, last});
}

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out = sizes.vec();
  out.back() = last;
  return out;
}

}  // namespace

at::Tensor masked_linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
  cuda::check_cuda(weight, "weight");
  check_masked_linear(input, weight, mask, bias);
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t n = weight.size(0), k = weight.size(1);
  const std::vector<int64_t> out_sizes = with_last(input.sizes(), n);
  const at::Tensor x = rows_of(input, k);
  if (x.size(0) == 0 || n == 0) return at::empty(out_sizes, input.options());
  const at::Tensor w = masked_weight(weight, mask);
  const at::Tensor y = bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
  return y.view(out_sizes);
}

at::Tensor masked_linear_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                         const at::Tensor& mask) {
  cuda::check_cuda(weight, "weight");
  check_grad_input(grad_output, weight, mask);
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t n = weight.size(0), k = weight.size(1);
  const std::vector<int64_t> out_sizes = with_last(grad_output.sizes(), k);
  const at::Tensor g = rows_of(grad_output, n);
  if (g.size(0) == 0 || k == 0) return at::empty(out_sizes, grad_output.options());
  return at::mm(g, masked_weight(weight, mask)).view(out_sizes);
}

at::Tensor masked_linear_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                          const at::Tensor& mask) {
  cuda::check_cuda(input, "input");
  const bool packed = check_grad_weight(grad_output, input, mask);
  const int64_t n = grad_output.size(-1), k = input.size(-1);
  const c10::cuda::CUDAGuard guard(input.device());
  if (n == 0 || k == 0) return at::empty({n, k}, input.options());
  at::Tensor dw = at::mm(rows_of(grad_output, n).t(), rows_of(input, k));  // zeros if no batch
  if (!dw.is_contiguous()) dw = dw.contiguous();
  cuda::mask_into(dw, mask.contiguous(), packed, dw);  // epilogue: exact zeros where pruned
  return dw;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cuda(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const at::Tensor& mask,
    std::array<bool, 3> output_mask) {
  cuda::check_cuda(grad_output, "grad_output");
  check_backward(grad_output, input, weight, mask, output_mask);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = masked_linear_grad_input_cuda(grad_output, *weight, mask);
  if (output_mask[1]) grad_weight = masked_linear_grad_weight_cuda(grad_output, *input, mask);
  if (output_mask[2]) {
    const int64_t n = grad_output.size(-1);
    grad_bias = rows_of(grad_output, n).sum(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace sparse_lottery
