// Mask maintenance on the CPU: apply_mask (out of place), apply_masks_ (many tensors in place, one
// parallel pass), pack_mask and unpack_mask. Every kernel is a single streaming pass; tensors are
// viewed as the rows of their GEMM view (mask_format.h), split into flat element ranges for
// at::parallel_for, so a 1-D tensor parallelises as well as a 2-D one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <string>

#include "../mask_format.h"
#include "../sparse_lottery.h"
#include "mask_simd.h"

namespace sparse_lottery {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel task

void check_cpu(const at::Tensor& t, const std::string& name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got device ", t.device());
}

// Byte b -> 8 bool bytes, bit k of b at byte k (LSB first).
const std::array<uint64_t, 256>& unpack_table() {
  static const std::array<uint64_t, 256> table = [] {
    std::array<uint64_t, 256> t{};
    for (int b = 0; b < 256; ++b)
      for (int k = 0; k < 8; ++k) t[b] |= static_cast<uint64_t>((b >> k) & 1) << (8 * k);
    return t;
  }();
  return table;
}

// Packs bools [c0, c1) (c0 a multiple of 8) of one row into bytes c0/8 ... of `out`; the last
// byte's bits past `cols` are zero.
void pack_row_bytes(const uint8_t* keep, int64_t cols, int64_t byte0, int64_t byte1, uint8_t* out) {
  int64_t c = byte0;
#if defined(__AVX2__)
  const __m256i zero = _mm256_setzero_si256();
  for (; c + 4 <= byte1 && (c + 4) * 8 <= cols; c += 4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keep + 8 * c));
    const uint32_t drop = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero)));
    const uint32_t bits = ~drop;
    std::memcpy(out + c, &bits, 4);
  }
#endif
  for (; c < byte1; ++c) {
    const int64_t n = std::min<int64_t>(8, cols - 8 * c);
    unsigned byte = 0;
    for (int64_t k = 0; k < n; ++k) byte |= static_cast<unsigned>(keep[8 * c + k] != 0) << k;
    out[c] = static_cast<uint8_t>(byte);
  }
}

}  // namespace

// out = tensor ⊙ mask. tensor: any shape, float dtype, read as contiguous numel elements;
// mask: bool of tensor's shape or packed (rows, ceil(cols/8)) of its GEMM view.
at::Tensor apply_mask_cpu(const at::Tensor& tensor, const at::Tensor& mask) {
  check_cpu(tensor, "tensor");
  check_same_device(tensor, "tensor", mask, "mask");
  check_mask(mask, tensor.sizes(), "mask", "tensor");
  const at::Tensor src = tensor.contiguous(), m = mask.contiguous();
  at::Tensor out = at::empty(tensor.sizes(), tensor.options());
  const int64_t cols = gemm_view(tensor.sizes()).second, numel = src.numel();
  if (numel == 0) return out;
  const cpu::MaskRef mref = cpu::mask_ref(m, cols);
  cpu::dispatch_width(tensor.scalar_type(), "tensor", [&](auto tag) {
    using T = decltype(tag);
    const T* s = static_cast<const T*>(src.data_ptr());
    T* d = static_cast<T*>(out.data_ptr());
    at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
      cpu::mask_range(s, mref, cols, b, e, d);
    });
  });
  return out;
}

// tensors[i] ⊙= masks[i] for every i: one at::parallel_for over the concatenated element ranges
// of all tensors (small tensors share a task). A non-contiguous tensor is masked in a contiguous
// copy that is written back.
void apply_masks__cpu(std::vector<at::Tensor> tensors, std::vector<at::Tensor> masks) {
  TORCH_CHECK(tensors.size() == masks.size(), "masks: expected ", tensors.size(),
              " masks (one per tensor), got ", masks.size());
  const size_t count = tensors.size();
  std::vector<at::Tensor> work(count), ms(count);
  std::vector<cpu::MaskRef> refs(count);
  std::vector<int64_t> cols(count), offset(count + 1, 0);
  for (size_t i = 0; i < count; ++i) {
    const std::string t_name = "tensors[" + std::to_string(i) + "]";
    const std::string m_name = "masks[" + std::to_string(i) + "]";
    check_cpu(tensors[i], t_name);
    check_same_device(tensors[i], t_name.c_str(), masks[i], m_name.c_str());
    check_mask(masks[i], tensors[i].sizes(), m_name.c_str(), t_name.c_str());
    cpu::dispatch_width(tensors[i].scalar_type(), t_name.c_str(), [](auto) {});
    work[i] = tensors[i].is_contiguous() ? tensors[i] : tensors[i].contiguous();
    ms[i] = masks[i].contiguous();
    cols[i] = gemm_view(tensors[i].sizes()).second;
    refs[i] = cpu::mask_ref(ms[i], cols[i]);
    offset[i + 1] = offset[i] + tensors[i].numel();
  }
  at::parallel_for(0, offset[count], kGrain, [&](int64_t b, int64_t e) {
    size_t i = std::upper_bound(offset.begin(), offset.end(), b) - offset.begin() - 1;
    for (; i < count && offset[i] < e; ++i) {
      const int64_t lo = std::max(b, offset[i]) - offset[i];
      const int64_t hi = std::min(e, offset[i + 1]) - offset[i];
      if (lo >= hi) continue;
      cpu::dispatch_width(work[i].scalar_type(), "tensor", [&](auto tag) {
        using T = decltype(tag);
        T* p = static_cast<T*>(work[i].data_ptr());
        cpu::mask_range(p, refs[i], cols[i], lo, hi, p);
      });
    }
  });
  for (size_t i = 0; i < count; ++i)
    if (!work[i].is_same(tensors[i])) tensors[i].copy_(work[i]);
}

// bool mask (any shape) -> packed uint8 (rows, ceil(cols/8)) of its GEMM view, padding bits 0.
at::Tensor pack_mask_cpu(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, "mask: expected dtype torch.bool, got ",
              dtype_name(mask.scalar_type()));
  check_cpu(mask, "mask");
  const auto [rows, cols] = gemm_view(mask.sizes());
  const int64_t row_bytes = packed_row_bytes(cols);
  at::Tensor out = at::empty({rows, row_bytes}, mask.options().dtype(at::kByte));
  if (out.numel() == 0) return out;
  const at::Tensor m = mask.contiguous();
  const uint8_t* keep = static_cast<const uint8_t*>(m.data_ptr());
  uint8_t* o = out.data_ptr<uint8_t>();
  at::parallel_for(0, rows * row_bytes, kGrain / 8, [&](int64_t b, int64_t e) {
    int64_t r = b / row_bytes, c = b % row_bytes;
    while (b < e) {
      const int64_t n = std::min(row_bytes - c, e - b);
      pack_row_bytes(keep + r * cols, cols, c, c + n, o + r * row_bytes);
      b += n;
      ++r;
      c = 0;
    }
  });
  return out;
}

// packed uint8 (rows, ceil(cols/8)) -> bool mask of `shape` (padding bits ignored).
at::Tensor unpack_mask_cpu(const at::Tensor& packed, std::vector<int64_t> shape) {
  TORCH_CHECK(packed.scalar_type() == at::kByte, "packed: expected dtype torch.uint8, got ",
              dtype_name(packed.scalar_type()));
  check_cpu(packed, "packed");
  const auto [rows, cols] = gemm_view(shape);
  TORCH_CHECK(packed.dim() == 2 && packed.size(0) == rows &&
                  packed.size(1) == packed_row_bytes(cols),
              "packed: expected shape [", rows, ", ", packed_row_bytes(cols),
              "] for a mask of shape ", at::IntArrayRef(shape), ", got ", packed.sizes());
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  const at::Tensor p = packed.contiguous();
  const uint8_t* bits = p.data_ptr<uint8_t>();
  uint8_t* o = static_cast<uint8_t*>(out.data_ptr());
  const int64_t row_bytes = packed_row_bytes(cols);
  const auto& table = unpack_table();
  at::parallel_for(0, rows * cols, kGrain, [&](int64_t b, int64_t e) {
    int64_t r = b / cols, c = b % cols;
    while (b < e) {
      const int64_t n = std::min(cols - c, e - b);
      const uint8_t* br = bits + r * row_bytes;
      uint8_t* orow = o + r * cols;
      int64_t j = c;
      for (; j < c + n && (j & 7); ++j) orow[j] = (br[j >> 3] >> (j & 7)) & 1;
      for (; j + 8 <= c + n; j += 8) std::memcpy(orow + j, &table[br[j >> 3]], 8);
      for (; j < c + n; ++j) orow[j] = (br[j >> 3] >> (j & 7)) & 1;
      b += n;
      ++r;
      c = 0;
    }
  });
  return out;
}

}  // namespace sparse_lottery
