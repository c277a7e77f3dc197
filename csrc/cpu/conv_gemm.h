// The im2col form of a masked 2-D convolution on the CPU (internal to csrc/): y = im2col(x)ᵀ
// (W⊙M)ᵀ through the masked-linear kernels, which fuse the mask into their GEMM panels (no masked
// copy of W) and mask d_weight in their epilogue. It serves outputs of at most kGemmPositions
// positions per image, where oneDNN's direct convolution is slow. Training step of a half-pruned
// 3×3 layer on the 2-core machine, im2col form vs nn.Conv2d: 16×512→512 on 2×2 maps 12.5 vs
// 29.0 ms, 128×512 on 2×2 87 vs 146 ms, 16×256 on 2×2 5.1 vs 7.3 ms, 16×64 on 2×2 1.33 vs 1.34
// ms; on 4×4 maps oneDNN ties or wins (16×512 43.6 vs 49.2, 16×128 5.4 vs 3.7 ms), on 8×8 it
// wins (16×64 5.3 vs 2.7 ms).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

namespace sparse_lottery::cpu {

constexpr int64_t kGemmPositions = 4;

// A convolution's geometry, as plain ints.
struct ConvGemm {
  std::array<int64_t, 2> kernel, stride, padding, dilation;
  int64_t out_h, out_w;

  int64_t positions() const { return out_h * out_w; }
};

// The geometry when the im2col form serves this call: concrete CPU tensors (no fake or other
// subclass), a batched 4-D input, groups 1, a non-empty product and at most kGemmPositions
// output positions; else nullopt.
std::optional<ConvGemm> conv_gemm_plan(const at::Tensor& input, const at::Tensor& weight,
                                       const at::Tensor& mask, c10::SymIntArrayRef stride,
                                       c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation,
                                       const c10::SymInt& groups);

// The convolution (batch, N, out_h, out_w), in the input's memory format.
at::Tensor conv_gemm_forward(const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                             const ConvGemm& g);

// (d_input, d_weight masked, d_bias), each only where output_mask asks for it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_gemm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& mask, const ConvGemm& g, std::array<bool, 3> output_mask);

}  // namespace sparse_lottery::cpu
