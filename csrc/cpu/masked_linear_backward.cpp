// masked_linear's gradients on the CPU, with the mask applied inside the products:
//   grad_input   dx[:, k-panel] = g @ mask(W[:, k-panel])      column panels of W, masked on load
//   grad_weight  dW[n-panel, :] = mask(g[:, n-panel]ᵀ @ x)     row panels, masked in place
//   grad_bias    db = Σ_batch g
// masked_linear_backward computes all three in one call and one parallel region: the panels of
// both products and the bias sum are tasks taken from one shared counter (panels.h). For a small
// layer each product is a single task, so the two GEMMs run side by side, each single-threaded
// (a 128x300->100 LeNet layer: the backward costs one GEMM's time instead of two multithreaded
// GEMMs, which scale poorly at that size, plus their fork/join). The standalone gradient ops use
// the same panels in a region of their own.
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "../mask_format.h"
#include "../sparse_lottery.h"
#include "mask_simd.h"
#include "narrow_gemm.h"
#include "panels.h"

namespace sparse_lottery {
namespace {

// Products of at least this many multiply-adds each run side by side on two threads when both
// gradients are wanted; smaller ones run one after the other (a parallel region costs a few µs).
constexpr int64_t kConcurrentWork = int64_t{1} << 16;

constexpr int64_t kBatchDim = 0;  // of the (M, N) grad_output, summed for grad_bias

// grad_input = g @ (W ⊙ M) into out (M, K), by column panels [k0, k0 + cols) of W (cols a
// multiple of 8, so packed mask rows start on whole bytes): each panel is masked into scratch
// (N, cols) and multiplied into the same columns of out.
struct GradInputPanels {
  at::Tensor g, w, m, out;  // g (M, N) BLAS-readable, w (N, K) and m contiguous, out (M, K)
  cpu::MaskRef mref;
  int64_t cols, count;

  GradInputPanels(at::Tensor g_, const at::Tensor& weight, const at::Tensor& mask, at::Tensor out_,
                  int64_t threads)
      : g(std::move(g_)), w(weight.detach().contiguous()), m(mask.contiguous()),
        out(std::move(out_)), mref(cpu::mask_ref(m, w.size(1))) {
    const int64_t N = w.size(0), K = w.size(1);
    cols = cpu::panel_len(K, N * w.element_size(), threads);
    count = (K + cols - 1) / cols;
  }

  void operator()(int64_t panel) const {
    const int64_t N = w.size(0), K = w.size(1);
    const int64_t k0 = panel * cols, n = std::min(cols, K - k0);
    const at::Tensor buf = cpu::scratch(N, n, w.options());
    cpu::dispatch_width(w.scalar_type(), "weight", [&](auto tag) {
      using T = decltype(tag);
      const T* wp = static_cast<const T*>(w.data_ptr());
      T* pp = static_cast<T*>(buf.data_ptr());
      if (n == K) {
        cpu::mask_range(wp, mref, K, 0, N * K, pp);
      } else {
        for (int64_t r = 0; r < N; ++r) cpu::mask_segment(wp + r * K + k0, mref, r, k0, n, pp + r * n);
      }
    });
    at::Tensor o = n == K ? out : out.narrow(1, k0, n);
    if (cpu::narrow::takes(w.scalar_type(), N)) {
      cpu::narrow::combine(g.const_data_ptr<float>(), g.stride(0), g.stride(1),
                           buf.const_data_ptr<float>(), n, o.mutable_data_ptr<float>(), K,
                           g.size(0), N, n);
    } else {
      at::mm_out(o, g, buf);
    }
  }
};

// grad_weight = (gᵀ @ x) ⊙ M into out (N, K), by row panels [n0, n0 + rows): each computed by
// BLAS and masked in place right after, while it is still in cache (exactly +0 where pruned, even
// next to inf/NaN).
struct GradWeightPanels {
  at::Tensor g, x, m, out;  // g (M, N) row-major, x (M, K) BLAS-readable, out (N, K) contiguous
  cpu::MaskRef mref;
  int64_t rows, count;

  GradWeightPanels(at::Tensor g_, at::Tensor x_, const at::Tensor& mask, at::Tensor out_,
                   int64_t threads)
      : g(std::move(g_)), x(std::move(x_)), m(mask.contiguous()), out(std::move(out_)),
        mref(cpu::mask_ref(m, out.size(1))) {
    const int64_t N = out.size(0), K = out.size(1);
    rows = cpu::panel_len(N, K * out.element_size(), threads);
    count = (N + rows - 1) / rows;
  }

  void operator()(int64_t panel) const {
    const int64_t N = out.size(0), K = out.size(1);
    const int64_t n0 = panel * rows, n = std::min(rows, N - n0);
    at::Tensor o = n == N ? out : out.narrow(0, n0, n);
    if (cpu::narrow::takes(out.scalar_type(), N) && x.stride(1) == 1) {
      cpu::narrow::combine(g.const_data_ptr<float>() + n0 * g.stride(1), g.stride(1),
                           g.stride(0), x.const_data_ptr<float>(), x.stride(0),
                           o.mutable_data_ptr<float>(), K, n, g.size(0), K);
    } else {
      at::mm_out(o, (n == N ? g : g.narrow(1, n0, n)).t(), x);
    }
    cpu::dispatch_width(out.scalar_type(), "input", [&](auto tag) {
      using T = decltype(tag);
      T* op = static_cast<T*>(out.data_ptr());
      cpu::mask_range(op, mref, K, n0 * K, (n0 + n) * K, op);
    });
  }
};

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out = sizes.vec();
  out.back() = last;
  return out;
}

}  // namespace

// d_input = grad_output @ (weight ⊙ mask); grad_output (..., N), weight (N, K) -> (..., K).
at::Tensor masked_linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                        const at::Tensor& mask) {
  check_grad_input(grad_output, weight, mask);
  cpu::check_cpu(weight, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  const at::Tensor g = cpu::blas_operand(cpu::rows_of(grad_output, N));
  const int64_t M = g.size(0);
  const auto sizes = with_last(grad_output.sizes(), K);
  if (M == 0 || K == 0 || N == 0) return at::zeros(sizes, weight.options());
  const int64_t threads = cpu::panel_threads(M * N * K);
  const GradInputPanels panels(g, weight, mask, at::empty({M, K}, weight.options()), threads);
  cpu::for_each_panel(panels.count, threads, panels);
  return panels.out.view(sizes);
}

// d_weight = (grad_outputᵀ @ input) ⊙ mask, exactly +0 where pruned; -> (N, K).
at::Tensor masked_linear_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& mask) {
  check_grad_weight(grad_output, input, mask);
  cpu::check_cpu(input, "input");
  const int64_t N = grad_output.size(-1), K = input.size(-1);
  const at::Tensor g = cpu::row_major(cpu::rows_of(grad_output, N));
  if (N == 0 || K == 0 || g.size(0) == 0) return at::zeros({N, K}, input.options());
  const int64_t threads = cpu::panel_threads(g.size(0) * N * K);
  const GradWeightPanels panels(g, cpu::blas_operand(cpu::rows_of(input, K)), mask,
                                at::empty({N, K}, input.options()), threads);
  cpu::for_each_panel(panels.count, threads, panels);
  return panels.out;
}

// (d_input, d_weight, d_bias), each only where output_mask asks for it (else undefined), in one
// parallel region.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const at::Tensor& mask,
    std::array<bool, 3> output_mask) {
  check_backward(grad_output, input, weight, mask, output_mask);
  cpu::check_cpu(grad_output, "grad_output");
  const auto [need_input, need_weight, need_bias] = output_mask;
  const int64_t N = grad_output.size(-1);
  const int64_t K = weight.has_value() ? weight->size(1) : input.has_value() ? input->size(-1) : 0;
  const at::Tensor g = cpu::row_major(cpu::rows_of(grad_output, N));
  const int64_t M = g.size(0);
  const at::TensorOptions options = grad_output.options();
  const bool empty = M == 0 || N == 0 || K == 0;
  at::Tensor grad_input, grad_weight, grad_bias;
  if (need_input && empty) grad_input = at::zeros({M, K}, options);
  if (need_weight && empty) grad_weight = at::zeros({N, K}, options);
  if (need_bias) grad_bias = at::empty({N}, options);
  // Large products are split into panels (as the standalone ops split them), small ones are a
  // single task each; one region runs them all when there are at least two.
  const int64_t split = cpu::panel_threads(M * N * K);
  std::optional<GradInputPanels> gi;
  std::optional<GradWeightPanels> gw;
  if (need_input && !empty) gi.emplace(g, *weight, mask, at::empty({M, K}, options), split);
  if (need_weight && !empty) {
    gw.emplace(g, cpu::blas_operand(cpu::rows_of(*input, K)), mask, at::empty({N, K}, options),
               split);
  }
  const int64_t n_gi = gi ? gi->count : 0, n_gw = gw ? gw->count : 0;
  const int64_t products = n_gi + n_gw;
  const bool together = split > 1 || (products >= 2 && M * N * K >= kConcurrentWork);
  const int64_t threads =
      together && !at::in_parallel_region() ? std::max<int64_t>(1, at::get_num_threads()) : 1;
  cpu::for_each_panel(products + need_bias, threads, [&](int64_t task) {
    if (task < n_gi) {
      (*gi)(task);
    } else if (task < products) {
      (*gw)(task - n_gi);
    } else {
      at::sum_out(grad_bias, g, at::IntArrayRef(kBatchDim));
    }
  });
  if (gi) grad_input = gi->out;
  if (gw) grad_weight = gw->out;
  if (grad_input.defined()) grad_input = grad_input.view(with_last(grad_output.sizes(), K));
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace sparse_lottery
