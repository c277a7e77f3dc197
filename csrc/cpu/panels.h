// Panel scheduling shared by the CPU masked-linear kernels (internal to csrc/cpu/).
//
// A product is cut into panels of the weight (rows or columns); each intra-op thread takes panels
// from a shared counter (dynamic scheduling), masks its panel (vectorised) into its own reused
// scratch buffer of about panel_bytes() (cache-resident: L3), and multiplies it with a
// single-threaded BLAS call (at::mm_out into a slice of the output; BLAS runs sequentially inside
// a parallel region). So the weight crosses DRAM once, as for a dense GEMM, masking on one core
// overlaps the GEMM on the other, there is no barrier between masking and GEMM, and nothing large
// is allocated per call besides the output. Panels never overlap: every output element is
// written exactly once. A product of fewer than kSerialWork multiply-adds is one panel.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdlib>
#include <memory>

namespace sparse_lottery::cpu {

// Bytes of one weight panel (per thread). 8 MiB measured best for a 256x4096x4096 fp32 training
// step on the 2-core development machine (0.5, 1, 2, 3, 4, 8, 12, 16 MiB tried, interleaved
// against dense: 0.5 MiB 1.29x dense, 1 MiB 1.15x, 2 MiB 1.0x, 4-16 MiB 0.91-0.97x). Panels
// that fit L2 lose more to BLAS re-packing the shared operand (x or grad_output) once per panel
// than they gain from L2 residency; two threads' 8 MiB panels still sit inside the 32 MiB L3.
// SPARSE_LOTTERY_CPU_PANEL_KB overrides it (read once) for tuning on other machines.
inline int64_t panel_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("SPARSE_LOTTERY_CPU_PANEL_KB");
    const int64_t kb = env ? std::atoll(env) : 0;
    return (kb > 0 ? kb : 8192) * 1024;
  }();
  return bytes;
}

// Multiply-adds under which a product is not split into panels: a parallel region per product
// costs more than it saves there (and far more when other processes contend for the cores).
constexpr int64_t kSerialWork = int64_t{1} << 24;

// Threads to split a product of `work` multiply-adds over (1 = one panel).
inline int64_t panel_threads(int64_t work) {
  if (work < kSerialWork || at::in_parallel_region()) return 1;
  return std::max<int64_t>(1, at::get_num_threads());
}

// Rows (or columns) per panel when each is `unit_bytes`: a multiple of 8 (whole packed-mask
// bytes), at least 16 (BLAS needs some width), and small enough that every thread gets a panel.
inline int64_t panel_len(int64_t total, int64_t unit_bytes, int64_t threads) {
  int64_t len = panel_bytes() / std::max<int64_t>(unit_bytes, 1);
  len = std::max<int64_t>(16, len / 8 * 8);
  const int64_t share = (total + threads - 1) / threads;
  return std::min(len, std::max<int64_t>(8, (share + 7) / 8 * 8));
}

// Calls f(task) for every task in [0, tasks): serially when threads == 1 (BLAS then threads
// itself), else in one parallel region whose threads take tasks from a shared counter (no static
// split: a thread that the OS pre-empts does not hold back the others). Worker threads do not
// inherit the caller's dispatch state, so f must only touch tensors that do not require grad
// (the kernels pass detached ones).
template <typename F>
void for_each_panel(int64_t tasks, int64_t threads, const F& f) {
  threads = std::min(threads, tasks);
  if (threads <= 1) {
    for (int64_t t = 0; t < tasks; ++t) f(t);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) f(t);
  });
}

// `t` (2-D) as BLAS can read it without a copy: unit stride along one dimension. Copies once
// here, not once per panel inside at::mm (e.g. a broadcast grad_output of y.sum()).
inline at::Tensor blas_operand(const at::Tensor& t) {
  const bool rowmajor = t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, t.size(1));
  const bool colmajor = t.stride(0) == 1 && t.stride(1) >= std::max<int64_t>(1, t.size(0));
  return rowmajor || colmajor ? t : t.contiguous();
}

// `t` (2-D) row-major with unit column stride, so that any column slice's transpose is
// BLAS-readable (grad_output for the weight gradient).
inline at::Tensor row_major(const at::Tensor& t) {
  return t.stride(1) == 1 && t.stride(0) >= std::max<int64_t>(1, t.size(1)) ? t : t.contiguous();
}

// The (rows, cols) view of `t`'s leading dimensions and last one, detached (worker threads must
// not see tensors that require grad); a copy only when the batch dimensions cannot be merged.
inline at::Tensor rows_of(const at::Tensor& t, int64_t cols) {
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < t.dim(); ++i) rows *= t.size(i);
  return t.detach().reshape({rows, cols});
}

// A (rows, cols) scratch tensor over this thread's reused buffer (64-byte aligned), so repeated
// calls neither allocate nor page-fault. Valid until the next scratch() call on this thread.
inline at::Tensor scratch(int64_t rows, int64_t cols, const at::TensorOptions& options) {
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

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got device ", t.device());
}

}  // namespace sparse_lottery::cpu
