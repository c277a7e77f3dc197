// magnitude_prune and random_prune on the CPU: the argument checks of
// sparse_lottery/_mask_format.py (same messages and exception types), the tensors viewed as
// selection sources (select_blocks.h) and one exact selection per group (radix_select.h).
// Semantics in selection.h; the oracle is sparse_lottery/reference.py.
//
// Groups: the whole pool (global scope) or each tensor (layerwise). A global group runs its
// passes on every thread (unless it is smaller than kParallelMin elements); layerwise groups run
// one per thread, except those too large to share the threads evenly. Errors follow the
// reference's order: a NaN anywhere (lowest tensor first), then a group asked to remove more
// than its survivors. SPARSE_LOTTERY_SELECT_BUDGET (bytes, read per call) overrides the
// candidates' memory budget, for tests.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "../mask_format.h"
#include "../selection.h"
#include "../sparse_lottery.h"
#include "radix_select.h"

namespace sparse_lottery {
namespace {

using cpu::select::GroupSelect;
using cpu::select::KeyKind;
using cpu::select::MaskKind;
using cpu::select::Outcome;
using cpu::select::Source;

constexpr int64_t kParallelMin = int64_t{1} << 17;
constexpr int64_t kMinBudget = int64_t{1} << 20;  // bytes of candidates at least

// Python's str(dtype): "torch.int32".
std::string py_dtype(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

// Python's repr(float): shortest round-trip digits, positional for exponents in [-4, 16).
std::string py_float(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  const auto end = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific).ptr;
  std::string sci(buf, end), sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  const int exp = std::atoi(sci.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  if (exp >= 16 || exp < -4) {
    std::string out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char tail[16];
    std::snprintf(tail, sizeof tail, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return sign + out + tail;
  }
  if (exp < 0) return sign + "0." + std::string(-exp - 1, '0') + digits;
  const size_t whole = static_cast<size_t>(exp) + 1;
  if (digits.size() <= whole) return sign + digits + std::string(whole - digits.size(), '0') + ".0";
  return sign + digits.substr(0, whole) + "." + digits.substr(whole);
}

std::string item(const char* what, size_t i) { return what + ("[" + std::to_string(i) + "]"); }

void check_amounts(at::ArrayRef<double> amounts, bool counts, bool layerwise, size_t tensors) {
  const size_t expected = layerwise ? tensors : 1;
  TORCH_CHECK_VALUE(amounts.size() == expected, "amounts: expected ", expected, " amount(s) (",
                    layerwise ? "one per tensor, layerwise scope" : "global scope", "), got ",
                    amounts.size());
  for (size_t i = 0; i < amounts.size(); ++i) {
    const double a = amounts[i];
    if (counts) {
      TORCH_CHECK_VALUE(std::isfinite(a) && a >= 0 && a == std::floor(a), item("amounts", i),
                        ": expected a whole count ≥ 0, got ", py_float(a));
    } else {
      TORCH_CHECK_VALUE(a >= 0.0 && a <= 1.0, item("amounts", i),
                        ": expected a fraction in [0, 1], got ", py_float(a));
    }
  }
}

// check_mask of _mask_format.py: a wrong dtype is a TypeError, a wrong shape a RuntimeError.
bool check_selection_mask(const at::Tensor& mask, at::IntArrayRef sizes, const std::string& name,
                          const std::string& of) {
  const auto t = mask.scalar_type();
  TORCH_CHECK_TYPE(t == at::kBool || t == at::kByte, name,
                   ": expected dtype torch.bool (one flag per weight) or torch.uint8 (packed by "
                   "sparse_lottery.pack_mask), got ", py_dtype(t));
  return check_mask(mask, sizes, name.c_str(), of.c_str());
}

// A new mask is written once, right away: huge pages spare a page fault per 4 KiB.
at::Tensor new_mask(at::IntArrayRef sizes, at::TensorOptions options) {
  at::Tensor out = at::empty(sizes, options);
  cpu::select::advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

int64_t budget_bytes(int64_t key_bytes) {
  if (const char* env = std::getenv("SPARSE_LOTTERY_SELECT_BUDGET")) {
    return std::max<int64_t>(0, std::strtoll(env, nullptr, 10));
  }
  return std::max(kMinBudget, key_bytes / 20);
}

// Runs every group; sources[i] is tensor i, key_bytes[i] its bytes of keys.
std::vector<Outcome> run_groups(const std::vector<Source>& sources,
                                const std::vector<int64_t>& key_bytes,
                                at::ArrayRef<double> amounts, bool counts, bool layerwise,
                                std::vector<uint8_t>& nan) {
  const int threads = at::get_num_threads();
  const auto n = static_cast<int64_t>(sources.size());
  if (!layerwise) {
    int64_t total = 0, bytes = 0;
    for (int64_t i = 0; i < n; ++i) {
      total += sources[i].numel();
      bytes += key_bytes[i];
    }
    GroupSelect group(sources.data(), n, total < kParallelMin ? 1 : threads,
                      budget_bytes(bytes), nan.data());
    return {group.run(amounts[0], counts)};
  }
  // Largest first: a group larger than its share of what is left runs alone on every thread;
  // the rest run one group per thread, each thread taking the next largest when it is free.
  std::vector<Outcome> outcomes(n);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return sources[a].numel() > sources[b].numel();
  });
  int64_t left = 0;
  for (const Source& s : sources) left += s.numel();
  int64_t first = 0;
  for (; first < n; ++first) {
    const int64_t i = order[first], size = sources[i].numel();
    if (threads == 1 || size < kParallelMin || size * threads <= left) break;
    GroupSelect group(&sources[i], 1, threads, budget_bytes(key_bytes[i]), &nan[i]);
    outcomes[i] = group.run(amounts[i], counts);
    left -= size;
  }
  std::atomic<int64_t> next{first};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t j; (j = next.fetch_add(1)) < n;) {
      const int64_t i = order[j];
      GroupSelect group(&sources[i], 1, 1, budget_bytes(key_bytes[i]), &nan[i]);
      outcomes[i] = group.run(amounts[i], counts);
    }
  });
  return outcomes;
}

// Raises the reference's first error, if any.
void raise_errors(const std::vector<Outcome>& outcomes, const std::vector<uint8_t>& nan,
                  bool layerwise) {
  for (size_t i = 0; i < nan.size(); ++i)
    TORCH_CHECK_VALUE(!nan[i], item("weights", i),
                      ": contains NaN, which has no magnitude to rank");
  for (size_t g = 0; g < outcomes.size(); ++g) {
    if (!outcomes[g].exceeds) continue;
    char k[400];
    std::snprintf(k, sizeof k, "%.0f", outcomes[g].requested);
    TORCH_CHECK_VALUE(false, "amounts: ", k, " to remove exceeds the ", outcomes[g].survivors,
                      " surviving weights of ",
                      layerwise ? "tensor " + std::to_string(g) : std::string("the pool"));
  }
}

std::pair<at::Tensor, at::Tensor> group_results(const std::vector<Outcome>& outcomes) {
  const auto groups = static_cast<int64_t>(outcomes.size());
  at::Tensor thresholds = at::empty({groups}, at::kDouble);
  at::Tensor removed = at::empty({groups}, at::kLong);
  for (int64_t g = 0; g < groups; ++g) {
    float value = 0.0f;
    if (outcomes[g].removed > 0) std::memcpy(&value, &outcomes[g].threshold_key, 4);
    thresholds.data_ptr<double>()[g] = value;
    removed.data_ptr<int64_t>()[g] = outcomes[g].removed;
  }
  return {thresholds, removed};
}

}  // namespace

MagnitudePruneResult magnitude_prune_cpu(at::TensorList weights,
                                         const c10::List<std::optional<at::Tensor>>& masks,
                                         at::ArrayRef<double> amounts, bool counts,
                                         bool layerwise) {
  const size_t n = weights.size();
  TORCH_CHECK_VALUE(masks.size() == n, "masks: expected ", n,
                    " masks (one per weight, or None), got ", masks.size());
  std::vector<at::Tensor> ws(n), ms(n), outs(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string w_name = item("weights", i), m_name = item("masks", i);
    const at::Tensor& w = weights[i];
    const auto t = w.scalar_type();
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, w_name,
                     ": expected dtype torch.float32, torch.bfloat16 or torch.float16, got ",
                     py_dtype(t));
    check_same_device(weights[0], "weights[0]", w, w_name.c_str());
    const std::optional<at::Tensor> m = masks[i];
    if (m.has_value() && m->defined()) {
      check_same_device(w, w_name.c_str(), *m, m_name.c_str());
      check_selection_mask(*m, w.sizes(), m_name, w_name);
      ms[i] = m->contiguous();
    }
  }
  check_amounts(amounts, counts, layerwise, n);

  std::vector<Source> sources(n);
  std::vector<int64_t> key_bytes(n);
  for (size_t i = 0; i < n; ++i) {
    ws[i] = weights[i].contiguous();
    const auto [rows, cols] = gemm_view(ws[i].sizes());
    Source& s = sources[i];
    const auto t = ws[i].scalar_type();
    s.key = t == at::kFloat ? KeyKind::kFloat
                            : (t == at::kBFloat16 ? KeyKind::kBFloat16 : KeyKind::kHalf);
    s.mask = !ms[i].defined() ? MaskKind::kNone
                              : (ms[i].scalar_type() == at::kByte ? MaskKind::kPacked
                                                                  : MaskKind::kBool);
    s.weights = ws[i].data_ptr();
    s.mask_data = ms[i].defined() ? static_cast<const uint8_t*>(ms[i].data_ptr()) : nullptr;
    s.stream = 0;
    if (s.mask == MaskKind::kPacked) {  // rows matter: the mask is packed per row
      s.rows = rows;
      s.cols = cols;
      outs[i] = new_mask({rows, packed_row_bytes(cols)}, ws[i].options().dtype(at::kByte));
    } else {  // one flat row
      s.rows = 1;
      s.cols = ws[i].numel();
      outs[i] = new_mask(ws[i].sizes(), ws[i].options().dtype(at::kBool));
    }
    s.row_bytes = packed_row_bytes(s.cols);
    s.out = static_cast<uint8_t*>(outs[i].data_ptr());
    key_bytes[i] = ws[i].numel() * static_cast<int64_t>(ws[i].element_size());
  }
  std::vector<uint8_t> nan(n, 0);
  const auto outcomes = run_groups(sources, key_bytes, amounts, counts, layerwise, nan);
  raise_errors(outcomes, nan, layerwise);
  auto [thresholds, removed] = group_results(outcomes);
  return {outs, thresholds, removed};
}

RandomPruneResult random_prune_cpu(at::TensorList masks, at::ArrayRef<double> amounts,
                                   bool counts, bool layerwise, int64_t seed) {
  const size_t n = masks.size();
  std::vector<at::Tensor> ms(n), outs(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string m_name = item("masks", i);
    const at::Tensor& m = masks[i];
    check_same_device(masks[0], "masks[0]", m, m_name.c_str());
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool || (m.scalar_type() == at::kByte && m.dim() == 2),
                     m_name, ": expected a bool mask or a packed 2-D torch.uint8 mask, got ",
                     m.dim(), "-D ", py_dtype(m.scalar_type()));
  }
  check_amounts(amounts, counts, layerwise, n);

  std::vector<Source> sources(n);
  std::vector<int64_t> key_bytes(n);
  for (size_t i = 0; i < n; ++i) {
    ms[i] = masks[i].contiguous();
    Source& s = sources[i];
    s.key = KeyKind::kRandom;
    s.weights = nullptr;
    s.mask_data = static_cast<const uint8_t*>(ms[i].data_ptr());
    s.stream = selection::random_stream(static_cast<uint64_t>(seed), static_cast<int64_t>(i));
    if (ms[i].scalar_type() == at::kByte) {  // every bit of every byte is a position
      s.mask = MaskKind::kPacked;
      s.rows = ms[i].size(0);
      s.row_bytes = ms[i].size(1);
      s.cols = 8 * s.row_bytes;
    } else {
      s.mask = MaskKind::kBool;
      std::tie(s.rows, s.cols) = gemm_view(ms[i].sizes());
      s.row_bytes = packed_row_bytes(s.cols);
    }
    outs[i] = new_mask(ms[i].sizes(), ms[i].options());
    s.out = static_cast<uint8_t*>(outs[i].data_ptr());
    key_bytes[i] = 4 * s.numel();
  }
  std::vector<uint8_t> nan(n, 0);
  const auto outcomes = run_groups(sources, key_bytes, amounts, counts, layerwise, nan);
  raise_errors(outcomes, nan, layerwise);
  return {outs, group_results(outcomes).second};
}

// The lead moves these lines into registration.cpp.
TORCH_LIBRARY_IMPL(sparse_lottery, CPU, m) {
  m.impl("magnitude_prune", &magnitude_prune_cpu);
  m.impl("random_prune", &random_prune_cpu);
}

}  // namespace sparse_lottery
