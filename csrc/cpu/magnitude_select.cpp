// magnitude_prune and random_prune on the CPU: the argument checks (selection_checks.h), the
// tensors viewed as selection sources (select_blocks.h) and one exact selection per group
// (radix_select.h).
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

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "../mask_format.h"
#include "../selection.h"
#include "../selection_checks.h"
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
constexpr int64_t kMinBudget = int64_t{1} << 16;  // bytes of candidates at least

std::string item(const char* what, size_t i) { return what + ("[" + std::to_string(i) + "]"); }

// Asks for huge pages for the 2 MiB pages inside [data, data + bytes) (Linux, when THP is
// "madvise"): memory written once right after allocation then costs a page fault per 2 MiB,
// not per 4 KiB (a 50 MB bool mask: ~25 faults instead of ~12000).
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// A new mask is written once, right away.
at::Tensor new_mask(at::IntArrayRef sizes, at::TensorOptions options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

// The candidates' budget: 1/12 of the group's key bytes (64 KiB at least), which bounds the
// selection's extra memory at ~8% of the weights (the sample and the radix histograms are
// smaller, and freed before the candidates are taken).
int64_t budget_bytes(int64_t key_bytes) {
  if (const char* env = std::getenv("SPARSE_LOTTERY_SELECT_BUDGET")) {
    return std::max<int64_t>(0, std::strtoll(env, nullptr, 10));
  }
  return std::max(kMinBudget, key_bytes / 12);
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
  selection::check_magnitude_prune(weights, masks, amounts, counts, layerwise);
  const size_t n = weights.size();
  std::vector<at::Tensor> ws(n), ms(n), outs(n);
  for (size_t i = 0; i < n; ++i) {
    const std::optional<at::Tensor> m = masks[i];
    if (m.has_value() && m->defined()) ms[i] = m->contiguous();
  }

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
  selection::check_random_prune(masks, amounts, counts, layerwise);
  const size_t n = masks.size();
  std::vector<at::Tensor> ms(n), outs(n);

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

}  // namespace sparse_lottery
