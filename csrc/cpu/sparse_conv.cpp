// sparse_conv2d and its backward on the CPU: a direct sparse convolution (no im2col), W (N×K,
// K = C·kh·kw) stored as in sparse_linear (sparse_checks.h).
//
// Layout: the input is copied once, zero-padded, into a "grid" (C, batch·Hp·Wp): per channel the
// batch's padded images one after another (Hp × Wp, padding shared between neighbours: see
// grid_of). On the grid a stride-1 convolution is a shift: output (b, h, w) sits at
// t = b·Hp·Wp + h·Wp + w and reads the input at t + shift, shift = i·dh·Wp + j·dw for the stored
// weight (ci, i, j). So each stored weight is one multiply-add over a long contiguous run of the
// grid — vectorised, with no bounds per row or image — at the price of also computing the grid's
// non-output positions (discarded): Hp·Wp / (OH·OW) of the useful work. A stride s > 1 computes
// the stride-1 grid and keeps every s-th position (s² the work: correct, not fast).
// A batch runs in chunks of images whose grids take ~4 MiB (for_each_chunk), so that they stay in
// the cache; d_values sums over the chunks.
//   forward:  y[co][t] = bias[co] + Σ_{e in row co} v_e · x[ci_e][t + shift_e]
//   d_input:  dx[ci][u] = Σ_{e in the columns of ci} v_e · dy[co_e][u − shift_e], dy placed on
//             the grid at the output positions (zero elsewhere) after a zero margin of the
//             largest shift, so that u − shift never leaves the plane;
//   d_values: d_values[e] = Σ_t dy[co_e][t] · x[ci_e][t + shift_e] (dy zero off the outputs,
//             so an infinite input there gives NaN where F.conv2d's gradient is ±inf).
// The forward and d_input keep a strip of kStrip outputs of one row in registers while they run
// over the row's stored weights (sparse_kernels.h's spmm with a shift for a row index): one load
// and one FMA per vector and stored weight; half types are computed in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
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

// A work item of the shift products: kRowsPerItem rows (output or input channels) over
// kStripsPerItem strips, strip by strip. One strip per item made items of a few hundred FMAs,
// and the threads' shared item counter bounced between the cores on every item: 8 strips cut a
// ResNet-20 forward at 95% sparsity (batch 64, 2 threads, min of 5 alternating runs) 16→16 @32
// 1.21 → 0.82 ms, 64→64 @8 0.62 → 0.50 ms; 4 strips measured alike.
constexpr int64_t kRowsPerItem = 4;
constexpr int64_t kStripsPerItem = 8;

template <class A>
inline sp::vec_t<A> loadu(const A* p) {  // grid runs start anywhere: unaligned
  sp::vec_t<A> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <class A>
inline void storeu(A* p, sp::vec_t<A> v) {
  std::memcpy(p, &v, sizeof v);
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The grid geometry of one call (see the top of the file); S is the strip of the acc type.
struct Grid {
  int64_t Hp, Wp, cells;  // grid image (values at rows [ph, ph + H), columns [pw, pw + W))
  int64_t max_shift;      // shift of the last kernel tap
  int64_t T;              // outputs computed: [0, T), whole strips, covering every output
  int64_t x_plane;        // input grid plane: T + max_shift ≥ cells
  int64_t u_plane;        // output / d_input grid plane: cells in whole strips (≥ T)
  int64_t dy_plane;       // dy grid plane: margin max_shift, then u_plane
};

// A tap reads at most ph rows above or below and pw columns left or right of an image's values,
// so the zero rows and columns between neighbours can be shared: a row of Wp = W + pw cells
// (pw zeros, then the values; the next row's zeros pad this one on the right) and an image of
// Hp = H + ph rows, unless the stride-1 output (OH1 × OW1) needs more. Waste for 3×3, padding
// 1: (H + 1)(W + 1) / (H·W) — 1.06 at 32×32, 1.27 at 8×8, 2.25 at 2×2.
Grid grid_of(const ConvShape& s, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t S) {
  const int64_t OH1 = s.H + 2 * padding[0] - dilation[0] * (s.kh - 1);
  const int64_t OW1 = s.W + 2 * padding[1] - dilation[1] * (s.kw - 1);
  Grid g;
  g.Hp = std::max(s.H + padding[0], OH1);
  g.Wp = std::max(s.W + padding[1], OW1);
  g.cells = s.batch * g.Hp * g.Wp;
  g.max_shift = (s.kh - 1) * dilation[0] * g.Wp + (s.kw - 1) * dilation[1];
  // The last output of the last image, plus one.
  const int64_t span = (s.batch - 1) * g.Hp * g.Wp + (OH1 - 1) * g.Wp + OW1;
  g.T = round_up(std::max<int64_t>(span, 1), S);
  g.x_plane = g.T + g.max_shift;
  g.u_plane = round_up(std::max(g.T, g.cells), S);
  g.dy_plane = g.max_shift + g.u_plane;
  return g;
}

// out[k·so] = in[k·si] for k < n, converted; the unit-stride case as a plain loop the compiler
// vectorises (the rows of contiguous inputs and of stride-1 outputs).
template <class S, class D>
inline void copy_row(const S* in, int64_t si, D* out, int64_t so, int64_t n) {
  if (si == 1 && so == 1) {
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<D>(in[k]);
  } else {
    for (int64_t k = 0; k < n; ++k) out[k * so] = static_cast<D>(in[k * si]);
  }
}

// grid[c][front + b·Hp·Wp + (top + r·step0)·Wp + left + k·step1] = src[b, c, r, k] for every
// element of src (batch, channels, rows, cols; any strides), every other position of the plane
// zero: the planes are rebuilt whole in a reused buffer, one pass per channel.
template <class T, class A>
void pack(const at::Tensor& src, A* grid, int64_t plane, int64_t front, const Grid& g, int64_t top,
          int64_t left, at::IntArrayRef step) {
  const T* x = src.const_data_ptr<T>();
  const int64_t batch = src.size(0), rows = src.size(2), cols = src.size(3);
  const int64_t image = g.Hp * g.Wp;
  at::parallel_for(0, src.size(1), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      A* p = grid + c * plane;
      std::fill(p, p + front, A(0));
      for (int64_t b = 0; b < batch; ++b) {
        // Zeros, then the values: one fill per (small, cache-resident) image rather than one
        // per row and side.
        A* img = p + front + b * image;
        std::fill(img, img + image, A(0));
        const T* in = x + b * src.stride(0) + c * src.stride(1);
        for (int64_t r = 0; r < rows; ++r)
          copy_row(in + r * src.stride(2), src.stride(3),
                   img + (top + r * step[0]) * g.Wp + left, step[1], cols);
      }
      std::fill(p + front + batch * image, p + plane, A(0));
    }
  });
}

// dst (batch, channels, rows, cols; contiguous, in T) read from the grid positions
// (top + r·step0, left + k·step1) of each image (images at the start of the planes).
template <class A, class T>
void unpack(const A* grid, int64_t plane, const Grid& g, int64_t top, int64_t left,
            at::IntArrayRef step, const at::Tensor& dst) {
  T* y = dst.mutable_data_ptr<T>();
  const int64_t channels = dst.size(1), rows = dst.size(2), cols = dst.size(3);
  const int64_t image = g.Hp * g.Wp, s1 = step[1];
  at::parallel_for(0, dst.size(0) * channels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const A* in = grid + i % channels * plane + i / channels * image + top * g.Wp + left;
      T* out = y + i * rows * cols;
      for (int64_t r = 0; r < rows; ++r)
        copy_row(in + r * step[0] * g.Wp, s1, out + r * cols, 1, cols);
    }
  });
}

// Grids of `planes` (count × plane length) carved from this thread's reused scratch buffer:
// no allocation and no page faults on repeated calls.
template <class A>
std::vector<A*> grids(std::initializer_list<std::array<int64_t, 2>> planes,
                      const at::TensorOptions& options, at::Tensor& keep) {
  int64_t total = 0;
  for (const auto& [count, length] : planes) total += count * length;
  keep = cpu::scratch(1, std::max<int64_t>(total, 1), options);
  std::vector<A*> out;
  A* p = keep.mutable_data_ptr<A>();
  for (const auto& [count, length] : planes) {
    out.push_back(p);
    p += count * length;
  }
  return out;
}

// Per kernel column c = ci·kh·kw + i·kw + j: its shift on the grid.
std::vector<int64_t> column_shifts(const ConvShape& s, at::IntArrayRef dilation, const Grid& g) {
  std::vector<int64_t> shift(s.K);
  for (int64_t c = 0; c < s.K; ++c) {
    const int64_t tap = c % (s.kh * s.kw);
    shift[c] = tap / s.kw * dilation[0] * g.Wp + tap % s.kw * dilation[1];
  }
  return shift;
}

// Per stored weight (CSR order): where its input run starts, x grid plane ci + shift.
at::Tensor csr_sources(const at::Tensor& col_indices, const std::vector<int64_t>& shift,
                       const ConvShape& s, const Grid& g) {
  at::Tensor out = at::empty({col_indices.numel()}, col_indices.options().dtype(at::kLong));
  const int32_t* col = col_indices.const_data_ptr<int32_t>();
  int64_t* src = out.mutable_data_ptr<int64_t>();
  const int64_t taps = s.kh * s.kw;
  at::parallel_for(0, col_indices.numel(), 4096, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) src[e] = col[e] / taps * g.x_plane + shift[col[e]];
  });
  return out;
}

// Per stored weight (CSC order): where its dy run starts, dy grid plane co − shift (after the
// margin).
at::Tensor csc_sources(const at::Tensor& col_offsets, const at::Tensor& row_indices,
                       const std::vector<int64_t>& shift, const Grid& g) {
  at::Tensor out = at::empty({row_indices.numel()}, row_indices.options().dtype(at::kLong));
  const int64_t* off = col_offsets.const_data_ptr<int64_t>();
  const int32_t* row = row_indices.const_data_ptr<int32_t>();
  int64_t* src = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, col_offsets.numel() - 1, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t e = off[c]; e < off[c + 1]; ++e)
        src[e] = row[e] * g.dy_plane + g.max_shift - shift[c];
  });
  return out;
}

// o[0 .. V·L) = init + Σ_{e in [e0, e1)} v[e] · grid[src[e] + t0 ...] (`grid` points at t0).
// No software prefetch: the strip's runs of all planes stay in L2 (strip-major order), and
// fetching kAhead weights ahead measured no faster (256→256 @8×8, 90% sparse).
template <int V, class A>
inline void shift_strip(int64_t e0, int64_t e1, const int64_t* src, const A* v, const A* grid,
                        A init, A* o) {
  constexpr int L = sp::Vec<A>::kLanes;
  sp::vec_t<A> acc[V];
  for (int k = 0; k < V; ++k) acc[k] = sp::vec_t<A>{} + init;
  for (int64_t e = e0; e < e1; ++e) {
    const A w = v[e];
    const A* d = grid + src[e];
    for (int k = 0; k < V; ++k) acc[k] += w * loadu(d + k * L);
  }
  for (int k = 0; k < V; ++k) storeu(o + k * L, acc[k]);
}

// out[r][0, T) = bias[r] (or 0) + Σ_{e in row r} v[e] · grid[src[e] + t], row r's entries being
// [offsets[r·step], offsets[(r + 1)·step]); items strip-block-major, so that the threads share
// the block of the grid being read.
template <class A>
void shift_spmm(const int64_t* offsets, int64_t step, int64_t rows, const int64_t* src,
                const A* v, const A* bias, const A* grid, int64_t T, A* out, int64_t out_plane) {
  constexpr int64_t S = sp::kStrip<A>;
  const int64_t row_items = (rows + kRowsPerItem - 1) / kRowsPerItem, strips = T / S;
  const int64_t strip_items = (strips + kStripsPerItem - 1) / kStripsPerItem;
  cpu::dynamic_for(at::get_num_threads(), row_items * strip_items, [&](int64_t i) {
    const int64_t r0 = i % row_items * kRowsPerItem, s0 = i / row_items * kStripsPerItem;
    for (int64_t k = s0; k < std::min(strips, s0 + kStripsPerItem); ++k)
      for (int64_t r = r0; r < std::min(rows, r0 + kRowsPerItem); ++r)
        shift_strip<8>(offsets[r * step], offsets[(r + 1) * step], src, v, grid + k * S,
                       bias ? bias[r] : A(0), out + r * out_plane + k * S);
  });
}

// d_values[e] += Σ_{t < T} dy[t] · x[src[e] + t] for the stored weights of rows [n0, n1), eight
// at a time so that each dy load serves eight FMAs (sparse_kernels.h's sddmm).
template <class A>
void shift_sddmm(const int64_t* offsets, const int64_t* src, const A* dy_grid, int64_t dy_plane,
                 int64_t margin, const A* x_grid, int64_t T, A* d_values, int64_t n) {
  constexpr int G = 8, L = sp::Vec<A>::kLanes;
  const A* g = dy_grid + n * dy_plane + margin;
  int64_t e = offsets[n];
  const int64_t e1 = offsets[n + 1];
  for (; e < e1; e += G) {
    const int group = static_cast<int>(std::min<int64_t>(G, e1 - e));
    const A* x[G];
    sp::vec_t<A> acc[G];
    for (int u = 0; u < G; ++u) {
      x[u] = x_grid + src[e + std::min(u, group - 1)];  // a short group repeats its last
      acc[u] = sp::vec_t<A>{};
    }
    for (int64_t t = 0; t < T; t += L) {
      const sp::vec_t<A> gv = loadu(g + t);
      for (int u = 0; u < G; ++u) acc[u] += gv * loadu(x[u] + t);
    }
    for (int u = 0; u < group; ++u) d_values[e + u] += sp::hsum<A>(acc[u]);
  }
}

constexpr std::array<int64_t, 2> kOne = {1, 1};

// Grid bytes a chunk of the batch aims at (see for_each_chunk): 1, 2, 4, 8 and 16 MiB measured
// alike for a 1000-image forward of 16 → 16 channels at 32×32 on the 2-core machine.
constexpr int64_t kChunkBytes = int64_t{4} << 20;

// f(shape of the chunk, its first image, its grid) for consecutive chunks of the batch, each of
// as many images as keep the chunk's `planes` grid planes near kChunkBytes (at least one image):
// the grids then stay cache-resident and inside the reused scratch buffer. The whole batch at
// once does not scale: 1000 images of 16 → 16 channels at 32×32 need 140 MB of grids, fresh
// pages on every call, and took 5× the time per image of a 64-image batch.
template <class A, class F>
void for_each_chunk(const ConvShape& s, at::IntArrayRef padding, at::IntArrayRef dilation,
                    int64_t planes, F&& f) {
  ConvShape one = s;
  one.batch = 1;
  const Grid g1 = grid_of(one, padding, dilation, sp::kStrip<A>);
  const int64_t image_bytes = std::max<int64_t>(1, planes * g1.Hp * g1.Wp * sizeof(A));
  const int64_t n =
      std::clamp<int64_t>(kChunkBytes / image_bytes, 1, std::max<int64_t>(s.batch, 1));
  for (int64_t b0 = 0; b0 < s.batch; b0 += n) {
    ConvShape chunk = s;
    chunk.batch = std::min(n, s.batch - b0);
    f(chunk, b0, grid_of(chunk, padding, dilation, sp::kStrip<A>));
  }
}

template <class T, class A>
at::Tensor forward(const ConvShape& s, const at::Tensor& x, const at::Tensor& values,
                   const at::Tensor& row_offsets, const at::Tensor& col_indices,
                   const at::Tensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation) {
  const auto acc = values.options().dtype(c10::CppTypeToScalarType<A>::value);
  const at::Tensor v = values.to(acc), b = bias.defined() ? bias.to(acc) : bias;
  at::Tensor y = at::empty({s.batch, s.N, s.OH, s.OW}, values.options());
  for_each_chunk<A>(s, padding, dilation, s.C + s.N, [&](const ConvShape& c, int64_t b0,
                                                         const Grid& g) {
    at::Tensor keep;
    const auto p = grids<A>({{s.C, g.x_plane}, {s.N, g.u_plane}}, acc, keep);  // x, y
    pack<T, A>(x.narrow(0, b0, c.batch), p[0], g.x_plane, 0, g, padding[0], padding[1], kOne);
    const at::Tensor src = csr_sources(col_indices, column_shifts(c, dilation, g), c, g);
    shift_spmm<A>(row_offsets.const_data_ptr<int64_t>(), 1, s.N, src.const_data_ptr<int64_t>(),
                  v.const_data_ptr<A>(), b.defined() ? b.const_data_ptr<A>() : nullptr, p[0],
                  g.T, p[1], g.u_plane);
    unpack<A, T>(p[1], g.u_plane, g, 0, 0, stride, y.narrow(0, b0, c.batch));
  });
  return y;
}

template <class T, class A>
std::array<at::Tensor, 2> backward(const ConvShape& s, const at::Tensor& dy, const at::Tensor& x,
                                   const at::Tensor& values, const at::Tensor& row_offsets,
                                   const at::Tensor& col_indices, const at::Tensor& col_offsets,
                                   const at::Tensor& row_indices,
                                   const at::Tensor& csr_positions, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation,
                                   std::array<bool, 3> output_mask) {
  const auto acc = values.options().dtype(c10::CppTypeToScalarType<A>::value);
  at::Tensor d_input, d_values, v_csc;
  if (output_mask[0]) {
    d_input = at::empty({s.batch, s.C, s.H, s.W}, values.options());
    // The values in CSC order first: one gather, then every strip reads them in sequence.
    v_csc = values.index_select(0, csr_positions).to(acc);
  }
  if (output_mask[1]) d_values = at::zeros({values.numel()}, acc);  // summed over the chunks
  const int64_t planes = s.N + (output_mask[0] ? s.C : 0) + (output_mask[1] ? s.C : 0);
  for_each_chunk<A>(s, padding, dilation, planes, [&](const ConvShape& c, int64_t b0,
                                                      const Grid& g) {
    at::Tensor keep;
    const auto p = grids<A>({{s.N, g.dy_plane},
                             {output_mask[0] ? s.C : 0, g.u_plane},
                             {output_mask[1] ? s.C : 0, g.x_plane}},
                            acc, keep);  // dy, dx, x
    pack<T, A>(dy.narrow(0, b0, c.batch), p[0], g.dy_plane, g.max_shift, g, 0, 0, stride);
    const std::vector<int64_t> shift = column_shifts(c, dilation, g);
    if (output_mask[0]) {
      const at::Tensor src = csc_sources(col_offsets, row_indices, shift, g);
      // Input channel ci owns the CSC columns [ci·kh·kw, (ci + 1)·kh·kw): one contiguous range.
      shift_spmm<A>(col_offsets.const_data_ptr<int64_t>(), s.kh * s.kw, s.C,
                    src.const_data_ptr<int64_t>(), v_csc.const_data_ptr<A>(), nullptr, p[0],
                    g.u_plane, p[1], g.u_plane);
      unpack<A, T>(p[1], g.u_plane, g, padding[0], padding[1], kOne,
                   d_input.narrow(0, b0, c.batch));
    }
    if (output_mask[1]) {
      pack<T, A>(x.narrow(0, b0, c.batch), p[2], g.x_plane, 0, g, padding[0], padding[1], kOne);
      const at::Tensor src = csr_sources(col_indices, shift, c, g);
      const int64_t* off = row_offsets.const_data_ptr<int64_t>();
      cpu::dynamic_for(at::get_num_threads(), s.N, [&](int64_t n) {
        shift_sddmm<A>(off, src.const_data_ptr<int64_t>(), p[0], g.dy_plane, g.max_shift, p[2],
                       g.T, d_values.mutable_data_ptr<A>(), n);
      });
    }
  });
  if (output_mask[1]) d_values = d_values.to(values.scalar_type());
  return {d_input, d_values};
}

}  // namespace

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_offsets, const at::Tensor& col_indices,
                             const at::Tensor& col_offsets, const at::Tensor& row_indices,
                             const at::Tensor& csr_positions,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  const ConvShape s =
      check_sparse_conv2d(input, values, row_offsets, col_indices, col_offsets, row_indices,
                          csr_positions, bias, kernel_size, stride, padding, dilation);
  cpu::check_cpu(values, "values");
  if (s.batch * s.N * s.OH * s.OW == 0)
    return at::empty({s.batch, s.N, s.OH, s.OW}, values.options());
  // Worker threads must not see tensors that require grad.
  const at::Tensor x = input.detach(), v = values.detach();
  const at::Tensor b = bias.has_value() ? bias->detach() : at::Tensor();
  at::Tensor y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "sparse_conv2d", [&] {
    y = forward<scalar_t, at::opmath_type<scalar_t>>(s, x, v, row_offsets, col_indices, b, stride,
                                                     padding, dilation);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& values,
    const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& col_offsets,
    const at::Tensor& row_indices, const at::Tensor& csr_positions, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 3> output_mask) {
  const ConvShape s = check_sparse_conv2d_backward(grad_output, input, values, row_offsets,
                                                   col_indices, col_offsets, row_indices,
                                                   csr_positions, kernel_size, stride, padding,
                                                   dilation);
  cpu::check_cpu(values, "values");
  at::Tensor d_input, d_values, d_bias;
  if (output_mask[2]) d_bias = grad_output.detach().sum({0, 2, 3});
  if (grad_output.numel() == 0) {  // nothing flows back: zero gradients of the right shapes
    if (output_mask[0]) d_input = at::zeros_like(input, at::MemoryFormat::Contiguous);
    if (output_mask[1]) d_values = at::zeros_like(values);
    return {d_input, d_values, d_bias};
  }
  const at::Tensor dy = grad_output.detach(), x = input.detach(), v = values.detach();
  std::array<at::Tensor, 2> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, v.scalar_type(), "sparse_conv2d_backward", [&] {
        grads = backward<scalar_t, at::opmath_type<scalar_t>>(
            s, dy, x, v, row_offsets, col_indices, col_offsets, row_indices, csr_positions,
            stride, padding, dilation, output_mask);
      });
  return {grads[0], grads[1], d_bias};
}

}  // namespace sparse_lottery
