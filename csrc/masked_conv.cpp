// masked_conv1d / masked_conv2d: the framework convolution of weight ⊙ mask, device-generic
// (apply_mask, then at::convolution), with a C++ autograd node: d_input and d_bias from
// at::convolution_backward, d_weight masked. 2-D convolutions with tiny outputs on the CPU take
// the im2col form of cpu/conv_gemm.h instead (the mask fused into GEMM panels). Under autograd
// the masked copy of the weight made by the forward is saved for the backward (as autograd would
// save weight * mask), and the weight itself for a differentiable backward under create_graph;
// no Python runs per step (a Python autograd function cost ~0.5 ms per training step, more than
// a small convolution's whole budget for the mask).
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include "cpu/conv_gemm.h"
#include "mask_format.h"
#include "sparse_lottery.h"

namespace sparse_lottery {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_apply_mask(const at::Tensor& tensor, const at::Tensor& mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparse_lottery::apply_mask", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(tensor, mask);
}

void check_masked_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), "weight: expected a floating dtype, got ",
              dtype_name(weight.scalar_type()));
  check_same_device(weight, "weight", input, "input");
  check_same_dtype(weight, "weight", input, "input");
  if (bias.has_value()) {
    check_same_device(weight, "weight", *bias, "bias");
    check_same_dtype(weight, "weight", *bias, "bias");
  }
  check_same_device(weight, "weight", mask, "mask");
  check_mask(mask, weight.sizes());
}

// True when a CPU mask keeps every weight (a dense level, an unpruned layer): the convolution of
// weight ⊙ mask is then exactly the plain one, and the forward's and backward's mask passes (two
// weight-sized copies and an allocation each, ~1% of a small layer's step) can be skipped.
// Reading a few bytes of the packed mask is far cheaper than either pass. Masks on other devices
// are not read (that would synchronise), nor fake or functional tensors (no data under tracing).
bool keeps_all(const at::Tensor& mask, at::IntArrayRef sizes) {
  if (!mask.device().is_cpu() || at::isTensorSubclassLike(mask)) return false;
  const at::Tensor m = mask.contiguous();
  if (m.scalar_type() == at::kBool) {
    const bool* p = m.const_data_ptr<bool>();
    return std::all_of(p, p + m.numel(), [](bool kept) { return kept; });
  }
  const auto [rows, cols] = gemm_view(sizes);
  const int64_t bytes = packed_row_bytes(cols);
  const uint8_t last = cols % 8 ? static_cast<uint8_t>((1u << (cols % 8)) - 1) : 0xFF;
  const uint8_t* p = m.const_data_ptr<uint8_t>();
  for (int64_t r = 0; r < rows && bytes > 0; ++r) {
    const uint8_t* row = p + r * bytes;
    if (!std::all_of(row, row + bytes - 1, [](uint8_t b) { return b == 0xFF; })) return false;
    if (row[bytes - 1] != last) return false;
  }
  return true;
}

// The im2col form's geometry where it serves a 2-D convolution (cpu/conv_gemm.h), else nullopt.
template <int Dims>
std::optional<cpu::ConvGemm> gemm_plan(const at::Tensor& input, const at::Tensor& weight,
                                       const at::Tensor& mask, c10::SymIntArrayRef stride,
                                       c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                                       const c10::SymInt& groups) {
  if constexpr (Dims != 2) return std::nullopt;
  return cpu::conv_gemm_plan(input, weight, mask, stride, padding, dilation, groups);
}

std::vector<c10::SymInt> zeros_like(c10::SymIntArrayRef a) {
  return std::vector<c10::SymInt>(a.size(), c10::SymInt(0));
}

std::vector<c10::SymInt> saved_ints(AutogradContext* ctx, const char* key) {
  return ctx->saved_data[key].toSymIntVector();
}

c10::IValue to_list(c10::SymIntArrayRef a) { return c10::IValue(a.vec()); }

template <int Dims>
class MaskedConv : public torch::autograd::Function<MaskedConv<Dims>> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const at::Tensor& mask,
                            const std::optional<at::Tensor>& bias, c10::SymIntArrayRef stride,
                            c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                            c10::SymInt groups) {
    ctx->saved_data["stride"] = to_list(stride);
    ctx->saved_data["padding"] = to_list(padding);
    ctx->saved_data["dilation"] = to_list(dilation);
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    check_masked_conv(input, weight, mask, bias);
    const auto gemm = gemm_plan<Dims>(input, weight, mask, stride, padding, dilation, groups);
    ctx->saved_data["gemm"] = gemm.has_value();
    // saved[3], the weight itself, serves the differentiable backward under create_graph.
    if (gemm) {  // the backward recomputes im2col(x) and reads the unmasked weight
      ctx->save_for_backward({input, weight, mask, weight});
      return cpu::conv_gemm_forward(input, weight, mask, bias, *gemm);
    }
    const bool full = keeps_all(mask, weight.sizes());
    ctx->saved_data["full"] = full;
    // The kernel's two steps, so that the masked weight the forward made serves the backward
    // too (one apply_mask and one allocation fewer per step than recomputing it there).
    at::Tensor masked_weight = full ? weight : call_apply_mask(weight, mask);
    ctx->save_for_backward({input, masked_weight, mask, weight});
    return at::convolution_symint(input, masked_weight, bias, stride, padding, dilation, false,
                                  zeros_like(padding), std::move(groups));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &mask = saved[2];
    const auto stride = saved_ints(ctx, "stride"), padding = saved_ints(ctx, "padding");
    const auto dilation = saved_ints(ctx, "dilation");
    const c10::SymInt groups = ctx->saved_data["groups"].toSymInt();
    std::optional<std::vector<c10::SymInt>> bias_sizes;
    if (ctx->saved_data["has_bias"].toBool()) bias_sizes = {saved[1].sym_size(0)};
    const std::array<bool, 3> output_mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                             bias_sizes.has_value() && ctx->needs_input_grad(3)};
    const auto bias_ref =
        bias_sizes ? std::optional<c10::SymIntArrayRef>(*bias_sizes) : std::nullopt;
    if (at::GradMode::is_enabled()) {
      // create_graph: the backward as differentiable ops of the weight itself (weight ⊙ mask
      // and d_weight ⊙ mask as multiplications), so that second derivatives reach it.
      const at::Tensor& weight = saved[3];
      const at::Tensor keep = call_unpack_mask(mask, weight.sym_sizes());
      auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
          grads[0], input, weight * keep, bias_ref, stride, padding, dilation, false,
          zeros_like(padding), groups, output_mask);
      if (grad_weight.defined()) grad_weight = grad_weight * keep;
      return {grad_input, grad_weight, at::Tensor(), grad_bias,
              at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    if (ctx->saved_data["gemm"].toBool()) {
      const auto plan = gemm_plan<Dims>(input, saved[1], mask, stride, padding, dilation, groups);
      auto [grad_input, grad_weight, grad_bias] =
          cpu::conv_gemm_backward(grads[0], input, saved[1], mask, *plan, output_mask);
      return {grad_input, grad_weight, at::Tensor(), grad_bias,
              at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    // The ops below need no autograd: skip the Autograd and ADInplaceOrView keys, as
    // masked_linear's backward does.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
        grads[0], input, saved[1], bias_ref, stride, padding, dilation, false,
        zeros_like(padding), groups, output_mask);
    if (grad_weight.defined() && !ctx->saved_data["full"].toBool()) {
      // On the CPU the fresh gradient is masked in place (one pass, no allocation: ~0.1 ms less
      // per step for a 512→512 3×3 layer); other devices and tensor subclasses get the
      // functional op through the dispatcher.
      if (grad_weight.device().is_cpu() && !at::isTensorSubclassLike(grad_weight) &&
          !at::isTensorSubclassLike(mask)) {
        apply_masks__cpu({grad_weight}, {mask});
      } else {
        grad_weight = call_apply_mask(grad_weight, mask);
      }
    }
    return {grad_input, grad_weight, at::Tensor(), grad_bias,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor call_unpack_mask(const at::Tensor& mask, c10::SymIntArrayRef shape) {
  if (mask.scalar_type() == at::kBool) return mask;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparse_lottery::unpack_mask", "")
                       .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef)>();
  return op.call(mask, shape);
}

template <int Dims>
at::Tensor masked_conv(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                       const std::optional<at::Tensor>& bias, c10::SymIntArrayRef stride,
                       c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                       c10::SymInt groups) {
  check_masked_conv(input, weight, mask, bias);
  if (const auto gemm = gemm_plan<Dims>(input, weight, mask, stride, padding, dilation, groups)) {
    return cpu::conv_gemm_forward(input, weight, mask, bias, *gemm);
  }
  const at::Tensor masked_weight =
      keeps_all(mask, weight.sizes()) ? weight : call_apply_mask(weight, mask);
  return at::convolution_symint(input, masked_weight, bias, stride, padding,
                                dilation, false, zeros_like(padding), std::move(groups));
}

template <int Dims>
at::Tensor masked_conv_autograd(const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                                c10::SymIntArrayRef stride, c10::SymIntArrayRef padding,
                                c10::SymIntArrayRef dilation, c10::SymInt groups) {
  return MaskedConv<Dims>::apply(input, weight, mask, bias, stride, padding, dilation,
                                 std::move(groups));
}

template at::Tensor masked_conv<1>(MASKED_CONV_ARGS);
template at::Tensor masked_conv<2>(MASKED_CONV_ARGS);
template at::Tensor masked_conv_autograd<1>(MASKED_CONV_ARGS);
template at::Tensor masked_conv_autograd<2>(MASKED_CONV_ARGS);

}  // namespace sparse_lottery
