// Python bindings of the kernels: one function per op and device, `<op>_<device>`.
#include <torch/extension.h>

#include "sparse_lottery.h"

namespace sl = sparse_lottery;

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparse_lottery C++ CPU and CUDA kernels";
  m.def("torch_version", [] {
    return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
           std::to_string(TORCH_VERSION_PATCH);
  });
#ifdef WITH_CUDA
  m.def("with_cuda", [] { return true; });
  m.def("cuda_archs", &sl::cuda_archs);
#else
  m.def("with_cuda", [] { return false; });
  m.def("cuda_archs", [] { return std::string(); });
#endif

#define SL_BIND(op, device) m.def(#op "_" #device, &sl::op##_##device)
#define SL_BIND_DEVICE(device)                     \
  SL_BIND(masked_linear, device);                  \
  SL_BIND(masked_linear_grad_input, device);       \
  SL_BIND(masked_linear_grad_weight, device);      \
  SL_BIND(apply_mask, device);                     \
  SL_BIND(apply_masks_, device);                   \
  SL_BIND(pack_mask, device);                      \
  SL_BIND(unpack_mask, device)

  SL_BIND_DEVICE(cpu);
#ifdef WITH_CUDA
  SL_BIND_DEVICE(cuda);
#endif
}
