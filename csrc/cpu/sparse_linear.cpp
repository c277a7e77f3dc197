// sparse_linear and its backward on the CPU: y = x Wᵀ + b with W stored as CSR values and a CSC
// index (sparse_checks.h); the products and the reasons for the layout are in sparse_kernels.h.
// Each call transposes its dense operands into batch-contiguous panels, runs the products over
// rows of W taken by free threads (dynamic_for.h), and transposes the result back.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <initializer_list>
#include <vector>

#include "../sparse_checks.h"
#include "../sparse_lottery.h"
#include "dynamic_for.h"
#include "panels.h"
#include "sparse_kernels.h"

namespace sparse_lottery {
namespace {

namespace sp = cpu::sparse;

// Rows of W (or Wᵀ) per work item: up to sp::kRowsPerItem (an L1 block of the panel serves more
// rows), but at least 4 items to share between the threads, of at least 16 rows.
int64_t item_rows(int64_t rows) { return std::clamp<int64_t>(rows / 4, 16, sp::kRowsPerItem); }

int64_t items(int64_t rows, int64_t per_item) { return (rows + per_item - 1) / per_item; }

// Threads for one call of `work` multiply-adds plus transposed elements: below kSmallWork one,
// as a parallel region per step costs more than it saves there (2-core machine, batch 100:
// 500→10 forward 26 µs on one thread vs 58 µs on two, 40→500 at 5% 30 vs 36 µs; 500→500 at 5%,
// 1.3M, still gains from two: 86 vs 146 µs).
constexpr int64_t kSmallWork = int64_t{1} << 18;

int threads_for(int64_t work) {
  return work < kSmallWork || at::in_parallel_region() ? 1 : at::get_num_threads();
}

// The panels of one call, carved from this thread's reused scratch buffer (no allocation and no
// page faults on repeated calls): one of r × Bp in the acc type A per r in `rows`.
template <class A>
std::vector<A*> panels(std::initializer_list<int64_t> rows, int64_t Bp, const at::Tensor& like,
                       at::Tensor& keep) {
  int64_t total = 0;
  for (const int64_t r : rows) total += r * Bp;
  keep = cpu::scratch(1, std::max<int64_t>(total, 1),
                      like.options().dtype(at::toOpMathType(like.scalar_type())));
  std::vector<A*> out;
  A* p = keep.mutable_data_ptr<A>();
  for (const int64_t r : rows) {
    out.push_back(p);
    p += r * Bp;
  }
  return out;
}

// dst (cols × Bp) <- mᵀ, the batch-contiguous panel of the (rows × cols) matrix m.
template <class T, class A>
void panel_of(const at::Tensor& m, A* dst, int64_t Bp, int threads) {
  const int64_t rows = m.size(0), cols = m.size(1);
  const T* src = m.const_data_ptr<T>();
  const int64_t tiles = (cols + sp::kTile - 1) / sp::kTile;
  cpu::dynamic_for(threads, tiles, [&](int64_t t) {
    const int64_t c0 = t * sp::kTile;
    sp::transpose_in<T, A>(src, rows, m.stride(0), m.stride(1), dst, Bp, c0,
                           std::min(cols, c0 + sp::kTile));
  });
}

// The (batch × R) matrix whose transpose is the panel p (R × Bp), in dtype T.
template <class A, class T>
at::Tensor unpanel(const A* p, int64_t R, int64_t Bp, int64_t batch,
                   const at::TensorOptions& options, int threads) {
  at::Tensor out = at::empty({batch, R}, options);
  T* dst = out.mutable_data_ptr<T>();
  const int64_t tiles = (R + sp::kTile - 1) / sp::kTile;
  cpu::dynamic_for(threads, tiles, [&](int64_t t) {
    const int64_t r0 = t * sp::kTile;
    sp::transpose_out<A, T>(p, Bp, batch, R, dst, r0, std::min(R, r0 + sp::kTile));
  });
  return out;
}

// out (rows × Bp) = bias + the sparse rows (offsets, idx, values) times the panel `dense`
// (dense_rows × Bp), strip-major: all rows of one strip of the batch before the next, so that
// the threads share the strip of `dense` being read (· × strip_width).
template <class T, class A>
void spmm(const at::Tensor& offsets, const at::Tensor& idx, const at::Tensor& values,
          const T* bias, const A* dense, int64_t dense_rows, int64_t Bp, A* out, int threads) {
  const int64_t rows = offsets.numel() - 1, per_item = item_rows(rows);
  const int64_t row_items = items(rows, per_item);
  const int64_t width = sp::strip_width<A>(Bp), strips = (Bp + width - 1) / width;
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const int32_t* id = idx.const_data_ptr<int32_t>();
  const T* v = values.const_data_ptr<T>();
  const int64_t block = sp::column_block(idx.numel(), rows, dense_rows, width * sizeof(A));
  cpu::dynamic_for(threads, row_items * strips, [&](int64_t i) {
    const int64_t r0 = i % row_items * per_item, c0 = i / row_items * width;
    sp::spmm_rows<A, T>(off, id, v, bias, dense, Bp, out, r0, std::min(rows, r0 + per_item), c0,
                        std::min(Bp, c0 + width), dense_rows, block);
  });
}

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out = sizes.vec();
  out.back() = last;
  return out;
}

}  // namespace

at::Tensor sparse_linear_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_offsets, const at::Tensor& col_indices,
                             const at::Tensor& col_offsets, const at::Tensor& row_indices,
                             const at::Tensor& csr_positions,
                             const std::optional<at::Tensor>& bias) {
  const int64_t N = check_sparse_linear(input, values, row_offsets, col_indices, col_offsets,
                                        row_indices, csr_positions, bias);
  cpu::check_cpu(values, "values");
  const int64_t K = input.size(-1);
  const at::Tensor x = cpu::rows_of(input, K);
  const int64_t batch = x.size(0);
  at::Tensor y;
  const auto dtype = values.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sparse_linear", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;  // accumulation: fp32, fp64 for fp64
    const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
    const T* bias_ptr = b.defined() ? b.const_data_ptr<T>() : nullptr;
    const int64_t Bp = sp::panel_width<A>(batch);
    const int threads = threads_for((values.numel() + K + N) * batch);
    at::Tensor keep;
    const auto p = panels<A>({K, N}, Bp, values, keep);  // xᵀ, yᵀ
    panel_of<T, A>(x, p[0], Bp, threads);
    spmm<T, A>(row_offsets, col_indices, values, bias_ptr, p[0], K, Bp, p[1], threads);
    y = unpanel<A, T>(p[1], N, Bp, batch, values.options(), threads);
  });
  return y.view(with_last(input.sizes(), N));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_linear_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const at::Tensor& values, const at::Tensor& row_offsets, const at::Tensor& col_indices,
    const at::Tensor& col_offsets, const at::Tensor& row_indices,
    const at::Tensor& csr_positions, std::array<bool, 3> output_mask) {
  const auto [N, K] = check_sparse_backward(grad_output, input, values, row_offsets, col_indices,
                                            col_offsets, row_indices, csr_positions,
                                            output_mask);
  cpu::check_cpu(values, "values");
  const at::Tensor dy = cpu::rows_of(grad_output, N);
  const int64_t batch = dy.size(0);
  at::Tensor grad_input, grad_values, grad_bias;
  const auto dtype = values.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sparse_linear_backward", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;  // accumulation: fp32, fp64 for fp64
    const int64_t Bp = sp::panel_width<A>(batch);
    const int threads = threads_for((2 * values.numel() + 2 * K + N) * batch);
    at::Tensor keep;
    const auto p = panels<A>({N, output_mask[0] ? K : 0, output_mask[1] ? K : 0}, Bp, values,
                             keep);  // dyᵀ, dxᵀ, xᵀ
    panel_of<T, A>(dy, p[0], Bp, threads);
    if (output_mask[0]) {
      // The values in CSC order first: one gather, then every strip reads them in sequence.
      const at::Tensor csc_values = values.index_select(0, csr_positions);
      spmm<T, A>(col_offsets, row_indices, csc_values, nullptr, p[0], N, Bp, p[1], threads);
      grad_input = unpanel<A, T>(p[1], K, Bp, batch, values.options(), threads)
                       .view(with_last(grad_output.sizes(), K));
    }
    if (output_mask[1]) {
      panel_of<T, A>(cpu::rows_of(*input, K), p[2], Bp, threads);
      grad_values = at::empty_like(values);
      const int64_t* off = row_offsets.const_data_ptr<int64_t>();
      const int32_t* cols = col_indices.const_data_ptr<int32_t>();
      T* out = grad_values.mutable_data_ptr<T>();
      const int64_t block = sp::column_block(values.numel(), N, K, Bp * sizeof(A));
      const int64_t per_item = item_rows(N);
      cpu::dynamic_for(threads, items(N, per_item), [&](int64_t i) {
        const int64_t n0 = i * per_item;
        sp::sddmm_rows<A, T>(off, cols, p[0], p[2], Bp, out, n0, std::min(N, n0 + per_item), K,
                             block);
      });
    }
  });
  if (output_mask[2]) grad_bias = dy.sum(0);
  return {grad_input, grad_values, grad_bias};
}

}  // namespace sparse_lottery
