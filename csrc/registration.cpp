// Registers the C++ kernels as the CPU and CUDA implementations of the torch.ops.sparse_lottery
// ops, the autograd of masked_linear, the masked convolutions and the sparse ops, and the version
// counting of the in-place ops, directly with the dispatcher: no Python on the call path.
// The schemas are defined once, in sparse_lottery/_library.py, which runs before this library
// is loaded; sparse_lottery/ops.py registers the fake kernels (and the Python autograd used
// only when this extension is absent), sparse_lottery/_double_backward.py the autograd of the
// gradient ops and of apply_mask.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "masked_optim.h"
#include "sparse_lottery.h"

namespace sparse_lottery {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor unpack_mask_cpu_sym(const at::Tensor& packed, c10::SymIntArrayRef shape) {
  return unpack_mask_cpu(packed, C10_AS_INTARRAYREF_SLOW(shape).vec());
}
#ifdef WITH_CUDA
at::Tensor unpack_mask_cuda_sym(const at::Tensor& packed, c10::SymIntArrayRef shape) {
  return unpack_mask_cuda(packed, C10_AS_INTARRAYREF_SLOW(shape).vec());
}
#endif

// The ops, called through the dispatcher so that every device (and FakeTensor) is served.
at::Tensor call_masked_linear(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparse_lottery::masked_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&)>();
  return op.call(input, weight, mask, bias);
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Grads call_masked_linear_backward(const at::Tensor& grad, const std::optional<at::Tensor>& input,
                                  const std::optional<at::Tensor>& weight, const at::Tensor& mask,
                                  std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparse_lottery::masked_linear_backward", "")
                       .typed<Grads(const at::Tensor&, const std::optional<at::Tensor>&,
                                    const std::optional<at::Tensor>&, const at::Tensor&,
                                    std::array<bool, 3>)>();
  return op.call(grad, input, weight, mask, output_mask);
}

// d_input = grad @ (W⊙M), d_weight = (gradᵀ x)⊙M, d_bias = Σ grad; only what is needed, in one
// call of masked_linear_backward.
class MaskedLinear : public torch::autograd::Function<MaskedLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const at::Tensor& mask,
                            const std::optional<at::Tensor>& bias) {
    // ctx->needs_input_grad is only valid once the graph node has edges (not when no input
    // requires grad), so the inputs' flags decide what to keep: x for d_weight, W for d_input.
    ctx->save_for_backward({weight.requires_grad() ? input : at::Tensor(),
                            input.requires_grad() ? weight : at::Tensor(), mask});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_masked_linear(input, weight, mask, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> output_mask = {
        ctx->needs_input_grad(0), ctx->needs_input_grad(1),
        ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3)};
    if (at::GradMode::is_enabled()) return differentiable_backward(saved, grads[0], output_mask);
    // The gradient op has no autograd of its own: skip the Autograd and ADInplaceOrView keys
    // (a few µs per call).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto optional = [](const at::Tensor& t) -> std::optional<at::Tensor> {
      return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
    };
    // One dispatch for all three: on the CPU the products and the bias sum share one parallel
    // region (for a small layer the two GEMMs run side by side, one thread each).
    auto [grad_input, grad_weight, grad_bias] = call_masked_linear_backward(
        grads[0], optional(saved[0]), optional(saved[1]), saved[2], output_mask);
    return {grad_input, grad_weight, at::Tensor(), grad_bias};
  }

  // create_graph: the same gradients as differentiable framework ops (the mask a
  // multiplication), so that second derivatives reach x and W.
  static variable_list differentiable_backward(const variable_list& saved, const at::Tensor& g,
                                               std::array<bool, 3> output_mask) {
    const at::Tensor &x = saved[0], &w = saved[1], &mask = saved[2];
    const c10::SymInt n = g.sym_size(-1);
    const c10::SymInt k = output_mask[0] ? w.sym_size(1) : x.sym_size(-1);
    const at::Tensor keep = call_unpack_mask(mask, {n, k});
    const at::Tensor rows = g.reshape_symint({-1, n});
    variable_list out(4);
    if (output_mask[0]) out[0] = at::matmul(g, w * keep);
    if (output_mask[1]) out[1] = at::mm(rows.t(), x.reshape_symint({-1, k})) * keep;
    if (output_mask[2]) out[2] = rows.sum(0);
    return out;
  }
};

at::Tensor masked_linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                                  const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
  return MaskedLinear::apply(input, weight, mask, bias);
}

// sparse_linear's autograd in C++, like masked_linear's: the Python one cost ~0.4 ms per training
// step (the MNIST-1D MLP's whole step at 95% sparsity is ~2 ms).
at::Tensor call_sparse_linear(const at::Tensor& input, const at::Tensor& values,
                              const at::Tensor& row_offsets, const at::Tensor& col_indices,
                              const at::Tensor& col_offsets, const at::Tensor& row_indices,
                              const at::Tensor& csr_positions,
                              const std::optional<at::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparse_lottery::sparse_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(input, values, row_offsets, col_indices, col_offsets, row_indices,
                 csr_positions, bias);
}

Grads call_sparse_linear_backward(const variable_list& saved, const at::Tensor& grad,
                                  std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparse_lottery::sparse_linear_backward", "")
                       .typed<Grads(const at::Tensor&, const std::optional<at::Tensor>&,
                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    std::array<bool, 3>)>();
  const std::optional<at::Tensor> input =
      saved[0].defined() ? std::optional<at::Tensor>(saved[0]) : std::nullopt;
  return op.call(grad, input, saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
                 output_mask);
}

class SparseLinear : public torch::autograd::Function<SparseLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& values, const at::Tensor& row_offsets,
                            const at::Tensor& col_indices, const at::Tensor& col_offsets,
                            const at::Tensor& row_indices, const at::Tensor& csr_positions,
                            const std::optional<at::Tensor>& bias) {
    // x is kept only for d_values (see MaskedLinear on needs_input_grad in the forward).
    ctx->save_for_backward({values.requires_grad() ? input : at::Tensor(), values, row_offsets,
                            col_indices, col_offsets, row_indices, csr_positions});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_sparse_linear(input, values, row_offsets, col_indices, col_offsets, row_indices,
                              csr_positions, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::array<bool, 3> output_mask = {
        ctx->needs_input_grad(0), ctx->needs_input_grad(1),
        ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(7)};
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();  // as in MaskedLinear
    auto [grad_input, grad_values, grad_bias] =
        call_sparse_linear_backward(ctx->get_saved_variables(), grads[0], output_mask);
    variable_list out(8);
    out[0] = grad_input;
    out[1] = grad_values;
    out[7] = grad_bias;
    return out;
  }
};

at::Tensor sparse_linear_autograd(const at::Tensor& input, const at::Tensor& values,
                                  const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                  const at::Tensor& col_offsets, const at::Tensor& row_indices,
                                  const at::Tensor& csr_positions,
                                  const std::optional<at::Tensor>& bias) {
  return SparseLinear::apply(input, values, row_offsets, col_indices, col_offsets, row_indices,
                             csr_positions, bias);
}

// sparse_conv2d's autograd in C++, like masked_linear's: a Python autograd function cost
// ~0.3 ms per training step, a fifth of a small layer's (16→16 @32×32, batch 16).
using IntList = at::IntArrayRef;

at::Tensor call_sparse_conv2d(const at::Tensor& input, const at::Tensor& values,
                              const at::Tensor& row_offsets, const at::Tensor& col_indices,
                              const at::Tensor& col_offsets, const at::Tensor& row_indices,
                              const at::Tensor& csr_positions,
                              const std::optional<at::Tensor>& bias, IntList kernel_size,
                              IntList stride, IntList padding, IntList dilation) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("sparse_lottery::sparse_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const std::optional<at::Tensor>&, IntList,
                            IntList, IntList, IntList)>();
  return op.call(input, values, row_offsets, col_indices, col_offsets, row_indices,
                 csr_positions, bias, kernel_size, stride, padding, dilation);
}

Grads call_sparse_conv2d_backward(const variable_list& saved, const at::Tensor& grad,
                                  IntList kernel_size, IntList stride, IntList padding,
                                  IntList dilation, std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparse_lottery::sparse_conv2d_backward", "")
                       .typed<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, IntList, IntList,
                                    IntList, IntList, std::array<bool, 3>)>();
  return op.call(grad, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
                 kernel_size, stride, padding, dilation, output_mask);
}

class SparseConv2d : public torch::autograd::Function<SparseConv2d> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& values, const at::Tensor& row_offsets,
                            const at::Tensor& col_indices, const at::Tensor& col_offsets,
                            const at::Tensor& row_indices, const at::Tensor& csr_positions,
                            const std::optional<at::Tensor>& bias, IntList kernel_size,
                            IntList stride, IntList padding, IntList dilation) {
    // input is kept even without d_values: d_input needs its shape.
    ctx->save_for_backward(
        {input, values, row_offsets, col_indices, col_offsets, row_indices, csr_positions});
    ctx->saved_data["geometry"] = std::vector<int64_t>{
        kernel_size[0], kernel_size[1], stride[0], stride[1],
        padding[0],     padding[1],     dilation[0], dilation[1]};
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_sparse_conv2d(input, values, row_offsets, col_indices, col_offsets, row_indices,
                              csr_positions, bias, kernel_size, stride, padding, dilation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> g = ctx->saved_data["geometry"].toIntVector();
    const std::array<bool, 3> output_mask = {
        ctx->needs_input_grad(0), ctx->needs_input_grad(1),
        ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(7)};
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();  // as in MaskedLinear
    auto [grad_input, grad_values, grad_bias] = call_sparse_conv2d_backward(
        saved, grads[0], IntList(g.data(), 2), IntList(g.data() + 2, 2),
        IntList(g.data() + 4, 2), IntList(g.data() + 6, 2), output_mask);
    variable_list out(12);
    out[0] = grad_input;
    out[1] = grad_values;
    out[7] = grad_bias;
    return out;
  }
};

at::Tensor sparse_conv2d_autograd(const at::Tensor& input, const at::Tensor& values,
                                  const at::Tensor& row_offsets, const at::Tensor& col_indices,
                                  const at::Tensor& col_offsets, const at::Tensor& row_indices,
                                  const at::Tensor& csr_positions,
                                  const std::optional<at::Tensor>& bias, IntList kernel_size,
                                  IntList stride, IntList padding, IntList dilation) {
  return SparseConv2d::apply(input, values, row_offsets, col_indices, col_offsets, row_indices,
                             csr_positions, bias, kernel_size, stride, padding, dilation);
}

// ------------------------------------------------------------------ the in-place ops
// apply_masks_, masked_sgd_ and masked_adamw_ write into tensors of their list arguments, and
// behave as torch's in-place ops do: every tensor they write gets its version counter bumped
// (autograd then refuses a backward that needs a value they changed, and caches keyed on the
// version see the change), and, not being differentiable, they refuse a tensor that requires
// grad while grad mode is on (instead of changing it behind autograd's back).

// f(argument name, index in its list, tensor) for every defined tensor the op writes; the
// arguments are the last schema().arguments().size() entries of the stack.
template <class F>
void for_each_written(const c10::OperatorHandle& op, const torch::jit::Stack& stack, F&& f) {
  const auto& args = op.schema().arguments();
  const size_t first = stack.size() - args.size();
  for (size_t a = 0; a < args.size(); ++a) {
    const c10::AliasInfo* alias = args[a].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const c10::IValue& value = stack[first + a];
    if (value.isTensor()) {
      if (value.toTensor().defined()) f(args[a].name(), 0, value.toTensor());
    } else if (value.isTensorList()) {
      const c10::List<at::Tensor> list = value.toTensorList();
      for (size_t i = 0; i < list.size(); ++i) {
        const at::Tensor t = list.get(i);
        if (t.defined()) f(args[a].name(), i, t);
      }
    }
  }
}

// Autograd key: refuse written tensors that require grad while grad mode is on.
void refuse_grad(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    for_each_written(op, *stack, [&](const std::string& name, size_t i, const at::Tensor& t) {
      TORCH_CHECK(!t.requires_grad(), op.schema().name(), ": ", name, "[", i,
                  "] requires grad, and the op writes it in place without being differentiable;"
                  " call it under torch.no_grad() (as optimisers and pruning do)");
    });
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// ADInplaceOrView key: run the op, then bump the version of every tensor it wrote.
void bump_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                   torch::jit::Stack* stack) {
  std::vector<at::Tensor> written;
  for_each_written(op, *stack,
                   [&](const std::string&, size_t, const at::Tensor& t) { written.push_back(t); });
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  for (const at::Tensor& t : written) torch::autograd::impl::bump_version(t);
}

constexpr const char* kInPlaceOps[] = {"apply_masks_", "masked_sgd_", "masked_adamw_"};

}  // namespace

TORCH_LIBRARY_IMPL(sparse_lottery, Autograd, m) {
  m.impl("masked_linear", &masked_linear_autograd);
  m.impl("sparse_linear", &sparse_linear_autograd);
  m.impl("sparse_conv2d", &sparse_conv2d_autograd);
  m.impl("masked_conv1d", &masked_conv_autograd<1>);
  m.impl("masked_conv2d", &masked_conv_autograd<2>);
  for (const char* name : kInPlaceOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&refuse_grad>());
}

TORCH_LIBRARY_IMPL(sparse_lottery, ADInplaceOrView, m) {
  for (const char* name : kInPlaceOps)
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&bump_versions>());
}

// The masked convolutions: apply_mask and the framework convolution, on every device.
TORCH_LIBRARY_IMPL(sparse_lottery, CompositeExplicitAutograd, m) {
  m.impl("masked_conv1d", &masked_conv<1>);
  m.impl("masked_conv2d", &masked_conv<2>);
}

#define SL_REGISTER(device)                                                   \
  m.impl("masked_linear", &masked_linear_##device);                           \
  m.impl("masked_linear_grad_input", &masked_linear_grad_input_##device);     \
  m.impl("masked_linear_grad_weight", &masked_linear_grad_weight_##device);   \
  m.impl("masked_linear_backward", &masked_linear_backward_##device);         \
  m.impl("apply_mask", &apply_mask_##device);                                 \
  m.impl("apply_masks_", &apply_masks__##device);                             \
  m.impl("pack_mask", &pack_mask_##device);                                   \
  m.impl("unpack_mask", &unpack_mask_##device##_sym);                         \
  m.impl("magnitude_prune", &magnitude_prune_##device);                       \
  m.impl("random_prune", &random_prune_##device);                             \
  m.impl("masked_sgd_", &masked_sgd__##device);                               \
  m.impl("masked_adamw_", &masked_adamw__##device)

// Sparse execution: C++ on the CPU; on CUDA the Triton or reference kernels (_registry.py).
TORCH_LIBRARY_IMPL(sparse_lottery, CPU, m) {
  SL_REGISTER(cpu);
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_linear_backward", &sparse_linear_backward_cpu);
  m.impl("sparse_conv2d", &sparse_conv2d_cpu);
  m.impl("sparse_conv2d_backward", &sparse_conv2d_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(sparse_lottery, CUDA, m) { SL_REGISTER(cuda); }
#endif

}  // namespace sparse_lottery
