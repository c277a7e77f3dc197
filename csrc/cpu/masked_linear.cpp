// masked_linear on the CPU, forward: y = x @ (W ⊙ M)ᵀ (+ bias) with the mask applied to each
// row panel of W as it is loaded into a scratch buffer (panels.h); no masked copy of the whole
// weight is ever made. The gradients are in masked_linear_backward.cpp.
#include <ATen/ATen.h>

#include "../mask_format.h"
#include "../sparse_lottery.h"
#include "mask_simd.h"
#include "narrow_gemm.h"
#include "panels.h"

namespace sparse_lottery {
namespace {

// The whole contiguous (N, K) weight ⊙ mask in this thread's scratch (single-panel problems).
at::Tensor masked_into_scratch(const at::Tensor& w, const cpu::MaskRef& mref) {
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor buf = cpu::scratch(N, K, w.options());
  cpu::dispatch_width(w.scalar_type(), "weight", [&](auto tag) {
    using T = decltype(tag);
    cpu::mask_range(static_cast<const T*>(w.data_ptr()), mref, K, 0, N * K,
                    static_cast<T*>(buf.data_ptr()));
  });
  return buf;
}

}  // namespace

// y = input @ (weight ⊙ mask)ᵀ + bias.
// weight: contiguous (N, K) elements of 2/4/8 bytes; mask: bool (N, K) or packed (N, ceil(K/8));
// each row panel [n0, n0 + rows) is masked into scratch (rows, K) and multiplied into columns
// [n0, n0 + rows) of the (M, N) output.
at::Tensor masked_linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
  check_masked_linear(input, weight, mask, bias);
  cpu::check_cpu(weight, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  std::vector<int64_t> out_sizes = input.sizes().vec();
  out_sizes.back() = N;
  const at::Tensor x = cpu::blas_operand(cpu::rows_of(input, K));
  const int64_t M = x.size(0);
  if (M == 0 || N == 0 || K == 0) {
    at::Tensor out = at::empty({M, N}, weight.options());
    bias.has_value() ? out.copy_(bias->expand({M, N})) : out.zero_();
    return out.view(out_sizes);
  }
  const at::Tensor w = weight.contiguous(), m = mask.contiguous();
  const cpu::MaskRef mref = cpu::mask_ref(m, K);
  if (cpu::narrow::takes(weight.scalar_type(), N)) {  // an output layer: N dots per row
    const at::Tensor buf = masked_into_scratch(w, mref);
    const at::Tensor xr = cpu::row_major(x);
    const at::Tensor b = bias.has_value() ? bias->detach().contiguous() : at::Tensor();
    at::Tensor out = at::empty({M, N}, weight.options());
    cpu::narrow::dots(xr.const_data_ptr<float>(), xr.stride(0), buf.const_data_ptr<float>(),
                      b.defined() ? b.const_data_ptr<float>() : nullptr,
                      out.mutable_data_ptr<float>(), N, M, N, K);
    return out.view(out_sizes);
  }
  const int64_t threads = cpu::panel_threads(M * N * K);
  const int64_t nb = cpu::panel_len(N, K * weight.element_size(), threads);
  if (nb >= N) {  // one panel: a single BLAS call that allocates and threads the product itself
    const at::Tensor buf = masked_into_scratch(w, mref);
    const at::Tensor out =
        bias.has_value() ? at::addmm(bias->detach(), x, buf.t()) : at::mm(x, buf.t());
    return out.view(out_sizes);
  }
  at::Tensor out = at::empty({M, N}, weight.options());
  cpu::dispatch_width(weight.scalar_type(), "weight", [&](auto tag) {
    using T = decltype(tag);
    const T* wp = static_cast<const T*>(w.data_ptr());
    cpu::for_each_panel((N + nb - 1) / nb, threads, [&](int64_t panel) {
      const int64_t n0 = panel * nb, rows = std::min(nb, N - n0);
      const at::Tensor buf = cpu::scratch(rows, K, weight.options());
      T* pp = static_cast<T*>(buf.data_ptr());
      for (int64_t r = 0; r < rows; ++r)
        cpu::mask_segment(wp + (n0 + r) * K, mref, n0 + r, 0, K, pp + r * K);
      at::Tensor o = out.narrow(1, n0, rows);
      if (bias.has_value()) {
        at::addmm_out(o, bias->detach().narrow(0, n0, rows), x, buf.t());
      } else {
        at::mm_out(o, x, buf.t());
      }
    });
  });
  return out.view(out_sizes);
}

}  // namespace sparse_lottery
