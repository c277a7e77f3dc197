// The im2col form of masked_conv2d on the CPU: see conv_gemm.h.
#include "conv_gemm.h"

#include <ATen/TensorSubclassLikeUtils.h>

#include "../sparse_checks.h"
#include "../sparse_lottery.h"

namespace sparse_lottery::cpu {
namespace {

std::optional<std::array<int64_t, 2>> ints(c10::SymIntArrayRef a) {
  if (a.size() != 2) return std::nullopt;
  const auto x = a[0].maybe_as_int(), y = a[1].maybe_as_int();
  if (!x || !y) return std::nullopt;
  return std::array<int64_t, 2>{*x, *y};
}

// The (N, C·kh·kw) GEMM view of the weight and its mask (a packed mask already has it).
at::Tensor rows(const at::Tensor& t, int64_t n) { return t.dim() == 2 ? t : t.reshape({n, -1}); }

// im2col(x) as (batch, positions, C·kh·kw): the GEMM's input rows.
at::Tensor columns(const at::Tensor& input, const ConvGemm& g) {
  return at::im2col(input, g.kernel, g.dilation, g.padding, g.stride).transpose(1, 2);
}

}  // namespace

std::optional<ConvGemm> conv_gemm_plan(const at::Tensor& input, const at::Tensor& weight,
                                       const at::Tensor& mask, c10::SymIntArrayRef stride,
                                       c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                                       const c10::SymInt& groups) {
  if (!input.device().is_cpu() || input.dim() != 4 || weight.dim() != 4) return std::nullopt;
  if (at::isTensorSubclassLike(input) || at::isTensorSubclassLike(weight) ||
      at::isTensorSubclassLike(mask) || groups.maybe_as_int() != std::optional<int64_t>(1)) {
    return std::nullopt;
  }
  const auto s = ints(stride), p = ints(padding), d = ints(dilation);
  if (!s || !p || !d) return std::nullopt;
  ConvGemm g{{weight.size(2), weight.size(3)}, *s, *p, *d, 0, 0};
  // A kernel larger than the padded input gives no positions: the framework's error then.
  const auto out = [&](int i) {
    return conv_output_size(input.size(2 + i), g.kernel[i], g.stride[i], g.padding[i],
                            g.dilation[i]);
  };
  g.out_h = out(0);
  g.out_w = out(1);
  if (g.out_h <= 0 || g.out_w <= 0 || g.positions() > kGemmPositions) return std::nullopt;
  if (input.size(0) == 0 || weight.numel() == 0) return std::nullopt;
  return g;
}

at::Tensor conv_gemm_forward(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                             const ConvGemm& g) {
  const int64_t batch = input.size(0), n = weight.size(0);
  const at::Tensor y =
      masked_linear_cpu(columns(input, g), rows(weight, n), rows(mask, n), bias);  // (B, L, N)
  // In the input's memory format, as the framework convolution returns it (channels-last is y
  // itself, viewed).
  return y.view({batch, g.out_h, g.out_w, n})
      .permute({0, 3, 1, 2})
      .contiguous(input.suggest_memory_format());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_gemm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, const ConvGemm& g, std::array<bool, 3> output_mask) {
  const int64_t batch = input.size(0), n = weight.size(0);
  const at::Tensor dy = grad_output.reshape({batch, n, g.positions()}).transpose(1, 2);
  auto [d_cols, d_weight, d_bias] = masked_linear_backward_cpu(
      dy, output_mask[1] ? std::optional<at::Tensor>(columns(input, g)) : std::nullopt,
      output_mask[0] ? std::optional<at::Tensor>(rows(weight, n)) : std::nullopt, rows(mask, n),
      output_mask);
  at::Tensor d_input;
  if (d_cols.defined()) {
    d_input = at::col2im(d_cols.transpose(1, 2), {input.size(2), input.size(3)}, g.kernel,
                         g.dilation, g.padding, g.stride);
  }
  if (d_weight.defined()) d_weight = d_weight.view(weight.sizes());
  return {d_input, d_weight, d_bias};
}

}  // namespace sparse_lottery::cpu
