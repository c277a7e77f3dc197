// The Python module sparse_lottery._C: build facts only. Loading it registers the kernels with
// the dispatcher (registration.cpp); they are called as torch.ops.sparse_lottery.*.
#include <torch/extension.h>

#include "cpu/conv_gemm.h"
#include "sparse_lottery.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparse_lottery C++ CPU and CUDA kernels (registered as torch.ops.sparse_lottery)";
  // Output positions per image up to which the CPU masked 2-D convolution takes its im2col form.
  m.attr("im2col_positions") = sparse_lottery::cpu::kGemmPositions;
  m.def("torch_version", [] {
    return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
           std::to_string(TORCH_VERSION_PATCH);
  });
#ifdef WITH_CUDA
  m.def("with_cuda", [] { return true; });
  m.def("cuda_archs", &sparse_lottery::cuda_archs);
#else
  m.def("with_cuda", [] { return false; });
  m.def("cuda_archs", [] { return std::string(); });
#endif
}
