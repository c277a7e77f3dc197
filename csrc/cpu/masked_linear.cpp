// masked_linear on the CPU: forward, input gradient and weight gradient, with the mask applied
// inside the product. No masked copy of the whole weight is ever made:
//   forward      y[:, n-panel]  = x @ mask(W[n-panel, :])ᵀ (+ bias)   row panels of W
//   grad_input   dx[:, k-panel] = g @ mask(W[:, k-panel])             column panels of W
//   grad_weight  dW[n-panel, :] = mask(g[:, n-panel]ᵀ @ x)            row panels, masked in place
// Threading: one parallel region per call. Each intra-op thread takes panels from a shared
// counter (dynamic scheduling), masks its panel (vectorised) into its own reused scratch buffer
// of about panel_bytes() (cache-resident: L3), and multiplies it with a single-threaded BLAS call
// (at::mm_out into a slice of the output; BLAS runs sequentially inside a parallel region). So the
// weight crosses DRAM once, as for a dense GEMM, masking on one core overlaps the GEMM on the
// other, there is no barrier between masking and GEMM, and nothing large is allocated per call
// besides the output. Panels never overlap: every output element is written exactly once.
// Small problems run serially on the calling thread, where BLAS picks its own threading.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdlib>
#include <memory>

#include "../mask_format.h"
#include "../sparse_lottery.h"
#include "mask_simd.h"

namespace sparse_lottery {
namespace {

// Bytes of one weight panel (per thread). 8 MiB measured best for a 256x4096x4096 fp32 training
// step on the 2-core development machine (0.5, 1, 2, 3, 4, 8, 12, 16 MiB tried, interleaved
// against dense: 0.5 MiB 1.29x dense, 1 MiB 1.15x, 2 MiB 1.0x, 4-16 MiB 0.91-0.97x). Panels
// that fit L2 lose more to BLAS re-packing the shared operand (x or grad_output) once per panel
// than they gain from L2 residency; two threads' 8 MiB panels still sit inside the 32 MiB L3.
// SPARSE_LOTTERY_CPU_PANEL_KB overrides it (read once) for tuning on other machines.
int64_t panel_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("SPARSE_LOTTERY_CPU_PANEL_KB");
    const int64_t kb = env ? std::atoll(env) : 0;
    return (kb > 0 ? kb : 8192) * 1024;
  }();
  return bytes;
}

// Multiply-adds under which a call runs serially on the calling thread: a parallel region costs
// more than it saves there (and far more when other processes contend for the cores).
constexpr int64_t kSerialWork = int64_t{1} << 24;

// Threads for a problem of `work` multiply-adds (1 = serial, BLAS threads itself).
int64_t panel_threads(int64_t work) {
  if (work < kSerialWork || at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, at::get_num_threads());
}

// Rows (or columns) per panel when each is `unit_bytes`: a multiple of 8 (whole packed-mask
// bytes), at least 16 (BLAS needs some width), and small enough that every thread gets a panel.
int64_t panel_len(int64_t total, int64_t unit_bytes, int64_t threads) {
  int64_t len = panel_bytes() / std::max<int64_t>(unit_bytes, 1);
  len = std::max<int64_t>(16, len / 8 * 8);
  const int64_t share = (total + threads - 1) / threads;
  return std::min(len, std::max<int64_t>(8, (share + 7) / 8 * 8));
}

// Calls f(panel) for every panel in [0, panels): serially when threads == 1, else in one parallel
// region whose threads take panels from a shared counter (no static split: a thread that the OS
// pre-empts does not hold back the others). Worker threads do not inherit the caller's dispatch
// state, so f must only touch tensors that do not require grad (the kernels pass detached ones).
template <typename F>
void for_each_panel(int64_t panels, int64_t threads, const F& f) {
  threads = std::min(threads, panels);
  if (threads <= 1) {
    for (int64_t p = 0; p < panels; ++p) f(p);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t p = next.fetch_add(1); p < panels; p = next.fetch_add(1)) f(p);
  });
}

// `t` (2-D) as BLAS can read it without a copy: unit stride along one dimension. Copies once
// here, not once per panel inside at::mm (e.g. a broadcast grad_output of y.sum()).
at::Tensor blas_operand(const at::Tensor& t) {
  const bool rowmajor = t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, t.size(1));
  const bool colmajor = t.stride(0) == 1 && t.stride(1) >= std::max<int64_t>(1, t.size(0));
  return rowmajor || colmajor ? t : t.contiguous();
}

// A (rows, cols) scratch tensor over this thread's reused buffer (64-byte aligned), so repeated
// calls neither allocate nor page-fault. Valid until the next scratch() call on this thread.
at::Tensor scratch(int64_t rows, int64_t cols, const at::TensorOptions& options) {
  constexpr size_t kMaxCached = size_t{64} << 20;
  const size_t bytes = static_cast<size_t>(rows * cols) * options.dtype().itemsize();
  if (bytes > kMaxCached) return at::empty({rows, cols}, options);
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    const size_t size = (bytes + 63) / 64 * 64;
    buffer.reset(std::aligned_alloc(64, size));
    TORCH_CHECK(buffer, "masked_linear: out of memory allocating a ", size, "-byte panel");
    capacity = size;
  }
  return at::from_blob(buffer.get(), {rows, cols}, options);
}

// The whole contiguous (N, K) weight ⊙ mask in this thread's scratch (single-panel problems).
at::Tensor masked_into_scratch(const at::Tensor& w, const cpu::MaskRef& mref) {
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor buf = scratch(N, K, w.options());
  cpu::dispatch_width(w.scalar_type(), "weight", [&](auto tag) {
    using T = decltype(tag);
    cpu::mask_range(static_cast<const T*>(w.data_ptr()), mref, K, 0, N * K,
                    static_cast<T*>(buf.data_ptr()));
  });
  return buf;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got device ", t.device());
}

}  // namespace

// y = input @ (weight ⊙ mask)ᵀ + bias.
// weight: contiguous (N, K) elements of 2/4/8 bytes; mask: bool (N, K) or packed (N, ceil(K/8));
// each row panel [n0, n0 + rows) is masked into scratch (rows, K) and multiplied into columns
// [n0, n0 + rows) of the (M, N) output.
at::Tensor masked_linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
  check_masked_linear(input, weight, mask, bias);
  check_cpu(weight, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  std::vector<int64_t> out_sizes = input.sizes().vec();
  out_sizes.back() = N;
  const at::Tensor x = blas_operand(input.detach().reshape({-1, K}));
  const int64_t M = x.size(0);
  if (M == 0 || N == 0 || K == 0) {
    at::Tensor out = at::empty({M, N}, weight.options());
    bias.has_value() ? out.copy_(bias->expand({M, N})) : out.zero_();
    return out.view(out_sizes);
  }
  const at::Tensor w = weight.contiguous(), m = mask.contiguous();
  const cpu::MaskRef mref = cpu::mask_ref(m, K);
  const int64_t threads = panel_threads(M * N * K);
  const int64_t nb = panel_len(N, K * weight.element_size(), threads);
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
    for_each_panel((N + nb - 1) / nb, threads, [&](int64_t panel) {
      const int64_t n0 = panel * nb, rows = std::min(nb, N - n0);
      const at::Tensor buf = scratch(rows, K, weight.options());
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

// d_input = grad_output @ (weight ⊙ mask).
// weight: contiguous (N, K); each column panel [k0, k0 + cols) (cols a multiple of 8, so packed
// rows start on whole bytes) is masked into scratch (N, cols) and multiplied into columns
// [k0, k0 + cols) of the (M, K) output.
at::Tensor masked_linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                        const at::Tensor& mask) {
  check_grad_input(grad_output, weight, mask);
  check_cpu(weight, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  std::vector<int64_t> out_sizes = grad_output.sizes().vec();
  out_sizes.back() = K;
  const at::Tensor g = blas_operand(grad_output.detach().reshape({-1, N}));
  const int64_t M = g.size(0);
  if (M == 0 || K == 0 || N == 0) return at::zeros({M, K}, weight.options()).view(out_sizes);
  const at::Tensor w = weight.contiguous(), m = mask.contiguous();
  const cpu::MaskRef mref = cpu::mask_ref(m, K);
  const int64_t threads = panel_threads(M * N * K);
  const int64_t kb = panel_len(K, N * weight.element_size(), threads);
  if (kb >= K) {  // one panel: a single BLAS call that allocates and threads the product itself
    const at::Tensor buf = masked_into_scratch(w, mref);
    return at::mm(g, buf).view(out_sizes);
  }
  at::Tensor out = at::empty({M, K}, weight.options());
  cpu::dispatch_width(weight.scalar_type(), "weight", [&](auto tag) {
    using T = decltype(tag);
    const T* wp = static_cast<const T*>(w.data_ptr());
    for_each_panel((K + kb - 1) / kb, threads, [&](int64_t panel) {
      const int64_t k0 = panel * kb, cols = std::min(kb, K - k0);
      const at::Tensor buf = scratch(N, cols, weight.options());
      T* pp = static_cast<T*>(buf.data_ptr());
      for (int64_t r = 0; r < N; ++r)
        cpu::mask_segment(wp + r * K + k0, mref, r, k0, cols, pp + r * cols);
      at::Tensor o = out.narrow(1, k0, cols);
      at::mm_out(o, g, buf);
    });
  });
  return out.view(out_sizes);
}

// d_weight = (grad_outputᵀ @ input) ⊙ mask, exactly +0 where pruned (even next to inf/NaN).
// Each row panel [n0, n0 + rows) of the contiguous (N, K) output is computed by BLAS and masked
// in place right after, while it is still in cache.
at::Tensor masked_linear_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& mask) {
  check_grad_weight(grad_output, input, mask);
  check_cpu(input, "input");
  const int64_t N = grad_output.size(-1), K = input.size(-1);
  const at::Tensor g = grad_output.detach().reshape({-1, N});
  if (N == 0 || K == 0 || g.size(0) == 0) return at::zeros({N, K}, input.options());
  // g[:, panel]ᵀ must be BLAS-readable: row-major g gives a column-major slice.
  const at::Tensor gc = g.stride(1) == 1 && g.stride(0) >= N ? g : g.contiguous();
  const at::Tensor x = blas_operand(input.detach().reshape({-1, K}));
  const at::Tensor m = mask.contiguous();
  const cpu::MaskRef mref = cpu::mask_ref(m, K);
  const int64_t threads = panel_threads(gc.size(0) * N * K);
  const int64_t nb = panel_len(N, K * input.element_size(), threads);
  if (nb >= N) {  // one panel: a single BLAS call, then the mask over the whole result
    at::Tensor out = at::mm(gc.t(), x);
    cpu::dispatch_width(input.scalar_type(), "input", [&](auto tag) {
      using T = decltype(tag);
      T* op = static_cast<T*>(out.data_ptr());
      cpu::mask_range(op, mref, K, 0, N * K, op);
    });
    return out;
  }
  at::Tensor out = at::empty({N, K}, input.options());
  cpu::dispatch_width(input.scalar_type(), "input", [&](auto tag) {
    using T = decltype(tag);
    T* op = static_cast<T*>(out.data_ptr());
    for_each_panel((N + nb - 1) / nb, threads, [&](int64_t panel) {
      const int64_t n0 = panel * nb, rows = std::min(nb, N - n0);
      at::Tensor o = out.narrow(0, n0, rows);
      at::mm_out(o, gc.narrow(1, n0, rows).t(), x);
      for (int64_t r = 0; r < rows; ++r) {
        T* row = op + (n0 + r) * K;
        cpu::mask_segment(row, mref, n0 + r, 0, K, row);
      }
    });
  });
  return out;
}

}  // namespace sparse_lottery
