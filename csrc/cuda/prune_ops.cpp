// magnitude_prune and random_prune on CUDA: the host side of the radix select (kernels in
// magnitude_select.cu, contracts in select_launch.h, semantics in selection.h).
//
// Launches, each one over every tensor of the call, on the current stream:
//   hist 0 -> [sync 1: survivors per group, NaN flags; the host checks them and sets k] ->
//   find 0 -> hist 1 -> find 1 -> (hist 2 -> find 2: only groups holding float32 or random keys
//   need the last 10 bits) -> [sync 2: per group T, rank, count] ->
//   (ties -> scan: only when a group removes part of its ties at T) -> write.
// Groups with k = 0 skip everything but hist 0 and the write. Non-contiguous weights and masks
// are read through .contiguous() copies; the inputs are never modified. Extra device memory: the
// segment table, 16 KiB of histogram and a state row per group, one int64 per block for the tie
// counts, and the new masks.

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/common.h"
#include "cuda/select_launch.h"
#include "selection.h"
#include "selection_checks.h"
#include "sparse_lottery.h"

namespace sparse_lottery {
namespace {

using cuda::SelectSegment;

constexpr int64_t kMinChunkItems = 4 * cuda::kSelectStepItems;  // 32768 positions per block
constexpr int64_t kMaxChunkItems = int64_t(1) << 28;  // per-block counts stay below 2^31

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The segments of one call (its non-empty tensors, in order) and what the host knows of them.
struct Work {
  std::vector<SelectSegment> segs;
  std::vector<at::Tensor> keep_alive;  // contiguous copies read by the kernels
  std::vector<int64_t> full;           // per group: needs the third pass (kStateFull)
  int64_t tensors = 0;
  bool layerwise = false;
  bool magnitude = true;

  int64_t groups() const { return layerwise ? tensors : 1; }
  int32_t group_of(int64_t tensor) const { return layerwise ? static_cast<int32_t>(tensor) : 0; }
};

// Per group: the number removed and the threshold key T (-1 where nothing is removed).
struct Selected {
  std::vector<int64_t> k, threshold;
};

// int64 values copied to `device` from pinned memory on the current stream (as apply_masks_).
at::Tensor to_device(const std::vector<int64_t>& values, at::Device device) {
  const auto n = static_cast<int64_t>(values.size());
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::copy(values.begin(), values.end(), host.data_ptr<int64_t>());
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kLong).device(device));
  out.copy_(host, /*non_blocking=*/true);
  return out;
}

int32_t vec_flags(const void* weight, const uint8_t* mask, int32_t mask_kind, const void* out,
                  int64_t cols) {
  int32_t vec = 0;
  if (weight != nullptr && cuda::aligned(weight, 16) &&
      (mask_kind != cuda::kPackedMask || cols % 8 == 0)) {
    vec |= cuda::kVecWeight;
  }
  if (mask_kind == cuda::kBoolMask && cuda::aligned(mask, 8)) vec |= cuda::kVecMask;
  if (mask_kind != cuda::kPackedMask && cuda::aligned(out, 8)) vec |= cuda::kVecOut;
  return vec;
}

// Runs the passes over work.segs, writing their new masks, and returns per group k and T.
Selected run_selection(const Work& work, at::ArrayRef<double> amounts, bool counts,
                       at::Device device) {
  const int64_t groups = work.groups();
  Selected result{std::vector<int64_t>(groups, 0), std::vector<int64_t>(groups, -1)};
  const auto n_segs = static_cast<int>(work.segs.size());
  if (n_segs == 0) {  // every tensor is empty: no survivors, nothing to launch
    for (int64_t g = 0; g < groups; ++g) {
      result.k[g] = selection::removal_count(amounts[g], counts, 0, work.layerwise, g);
    }
    return result;
  }

  // Block map: chunks of ~1/8 of the work per SM (at least kMinChunkItems items), each segment
  // cut into whole chunks; the blocks of a group are consecutive and in position order.
  int64_t total_items = 0;
  for (const SelectSegment& s : work.segs) total_items += s.items;
  const int64_t target_blocks = std::max<int64_t>(1, cuda::max_blocks() / 2);
  int64_t chunk = std::max(kMinChunkItems, ceil_div(total_items, target_blocks));
  chunk = std::min(ceil_div(chunk, cuda::kSelectStepItems) * cuda::kSelectStepItems,
                   kMaxChunkItems);
  std::vector<int64_t> block_start(n_segs), first_block(groups, 0);
  std::vector<bool> seen(groups, false);
  int64_t n_blocks = 0;
  for (int s = 0; s < n_segs; ++s) {
    const int32_t g = work.segs[s].group;
    if (!seen[g]) first_block[g] = n_blocks;
    seen[g] = true;
    block_start[s] = n_blocks;
    n_blocks += ceil_div(work.segs[s].items, chunk);
  }
  TORCH_CHECK(n_blocks < INT_MAX, "weights: too many elements for one launch (", total_items,
              " groups of 8)");
  const int blocks = static_cast<int>(n_blocks);

  // Device table: the segments, then block_start.
  constexpr size_t kSegWords = sizeof(SelectSegment) / sizeof(int64_t);
  std::vector<int64_t> words(n_segs * kSegWords + n_segs);
  std::memcpy(words.data(), work.segs.data(), n_segs * sizeof(SelectSegment));
  std::copy(block_start.begin(), block_start.end(), words.begin() + n_segs * kSegWords);
  const at::Tensor table = to_device(words, device);
  const auto* segs = reinterpret_cast<const SelectSegment*>(table.data_ptr<int64_t>());
  const int64_t* starts = table.data_ptr<int64_t>() + n_segs * kSegWords;

  const auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor hist = at::zeros({groups * cuda::kSelectBins}, opts);
  const at::Tensor found = at::zeros({groups + work.tensors}, opts);  // survivors, NaN flags
  auto* h = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
  auto* survivors = reinterpret_cast<unsigned long long*>(found.data_ptr<int64_t>());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  C10_CUDA_CHECK(cuda::launch_select_hist(segs, starts, n_segs, blocks, chunk, 0, nullptr, h,
                                          survivors, survivors + groups, stream));
  const at::Tensor found_host = found.cpu();  // sync 1
  const int64_t* f = found_host.data_ptr<int64_t>();
  if (work.magnitude) {
    for (int64_t i = 0; i < work.tensors; ++i) {
      TORCH_CHECK_VALUE(f[groups + i] == 0, "weights[", i,
                        "]: contains NaN, which has no magnitude to rank");
    }
  }
  bool any_k = false, any_full = false;
  std::vector<int64_t> state(groups * cuda::kStateFields, 0);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t k = selection::removal_count(amounts[g], counts, f[g], work.layerwise, g);
    result.k[g] = k;
    any_k |= k > 0;
    any_full |= k > 0 && work.full[g] != 0;
    int64_t* row = state.data() + g * cuda::kStateFields;
    row[cuda::kStateK] = k;
    row[cuda::kStateRank] = k;
    row[cuda::kStateFull] = work.full[g];
    row[cuda::kStateFirstBlock] = first_block[g];
    row[cuda::kStateThreshold] = -1;
  }
  const at::Tensor state_dev = to_device(state, device);
  int64_t* st = state_dev.data_ptr<int64_t>();

  bool partial = false;  // some group removes only part of its ties at T
  if (any_k) {
    const int last_pass = any_full ? 2 : 1;
    for (int pass = 0; pass <= last_pass; ++pass) {
      if (pass > 0) {
        C10_CUDA_CHECK(cuda::launch_select_hist(segs, starts, n_segs, blocks, chunk, pass, st,
                                                h, survivors, survivors + groups, stream));
      }
      C10_CUDA_CHECK(cuda::launch_select_find(st, h, static_cast<int>(groups), pass, stream));
    }
    const at::Tensor state_host = state_dev.cpu();  // sync 2
    const int64_t* row = state_host.data_ptr<int64_t>();
    for (int64_t g = 0; g < groups; ++g, row += cuda::kStateFields) {
      if (result.k[g] == 0) continue;
      const int64_t t = row[cuda::kStateThreshold], r = row[cuda::kStateRank],
                    c = row[cuda::kStateCount];
      TORCH_INTERNAL_ASSERT(t >= 0 && t <= INT32_MAX && r >= 1 && r <= c,
                            "selection: group ", g, " found no threshold (T=", t, ", rank=", r,
                            ", count=", c, ")");
      result.threshold[g] = t;
      partial |= r < c;
    }
  }

  at::Tensor tie_offsets;
  if (partial) {
    tie_offsets = at::empty({n_blocks}, opts);
    int64_t* ties = tie_offsets.data_ptr<int64_t>();
    C10_CUDA_CHECK(
        cuda::launch_select_ties(segs, starts, n_segs, blocks, chunk, st, ties, stream));
    C10_CUDA_CHECK(cuda::launch_select_scan(ties, blocks, stream));
  }
  C10_CUDA_CHECK(cuda::launch_select_write(
      segs, starts, n_segs, blocks, chunk, st,
      partial ? tie_offsets.data_ptr<int64_t>() : nullptr, stream));
  return result;
}

at::Tensor cpu_longs(const std::vector<int64_t>& v) {
  return at::tensor(at::ArrayRef<int64_t>(v), at::TensorOptions().dtype(at::kLong));
}

}  // namespace

MagnitudePruneResult magnitude_prune_cuda(at::TensorList weights,
                                          const c10::List<std::optional<at::Tensor>>& masks,
                                          at::ArrayRef<double> amounts, bool counts,
                                          bool layerwise) {
  selection::check_magnitude_prune(weights, masks, amounts, counts, layerwise);
  Work work;
  work.tensors = static_cast<int64_t>(weights.size());
  work.layerwise = layerwise;
  work.full.assign(work.groups(), 0);
  std::optional<c10::cuda::CUDAGuard> guard;
  if (!weights.empty()) {
    cuda::check_cuda(weights[0], "weights[0]");
    guard.emplace(weights[0].device());
  }
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < work.tensors; ++i) {
    const at::Tensor w = weights[i].contiguous();
    const std::optional<at::Tensor> given = masks.get(i);
    const bool has_mask = given.has_value() && given->defined();
    const at::Tensor m = has_mask ? given->contiguous() : at::Tensor();
    const bool packed = has_mask && m.scalar_type() == at::kByte;
    at::Tensor out = has_mask ? at::empty(m.sizes(), m.options())
                              : at::empty(w.sizes(), w.options().dtype(at::kBool));
    outs.push_back(out);

    const auto [rows, cols] = gemm_view(w.sizes());
    SelectSegment s{};
    s.weight = w.data_ptr();
    s.mask = has_mask ? static_cast<const uint8_t*>(m.data_ptr()) : nullptr;
    s.out = static_cast<uint8_t*>(out.data_ptr());
    s.numel = w.numel();
    s.cols = cols;
    s.ld = packed ? m.size(1) : 0;
    s.items = packed ? rows * s.ld : ceil_div(s.numel, 8);
    s.kind = w.scalar_type() == at::kFloat      ? cuda::kSelectF32
             : w.scalar_type() == at::kBFloat16 ? cuda::kSelectBF16
                                                : cuda::kSelectF16;
    s.mask_kind = !has_mask ? cuda::kNoMask : (packed ? cuda::kPackedMask : cuda::kBoolMask);
    s.group = work.group_of(i);
    s.tensor = static_cast<int32_t>(i);
    s.vec = vec_flags(s.weight, s.mask, s.mask_kind, s.out, cols);
    if (s.items == 0) continue;  // empty: its (empty) mask is already complete
    if (s.kind == cuda::kSelectF32) work.full[s.group] = 1;  // low 10 key bits may be set
    work.segs.push_back(s);
    work.keep_alive.push_back(w);
    if (has_mask) work.keep_alive.push_back(m);
  }
  const Selected sel =
      run_selection(work, amounts, counts, weights.empty() ? at::Device(at::kCPU)
                                                           : weights[0].device());
  std::vector<double> thresholds(sel.threshold.size(), 0.0);
  for (size_t g = 0; g < thresholds.size(); ++g) {
    if (sel.threshold[g] < 0) continue;
    const auto bits = static_cast<uint32_t>(sel.threshold[g]);
    float magnitude;
    std::memcpy(&magnitude, &bits, sizeof(magnitude));
    thresholds[g] = magnitude;
  }
  return {outs,
          at::tensor(at::ArrayRef<double>(thresholds), at::TensorOptions().dtype(at::kDouble)),
          cpu_longs(sel.k)};
}

RandomPruneResult random_prune_cuda(at::TensorList masks, at::ArrayRef<double> amounts,
                                    bool counts, bool layerwise, int64_t seed) {
  selection::check_random_prune(masks, amounts, counts, layerwise);
  Work work;
  work.tensors = static_cast<int64_t>(masks.size());
  work.layerwise = layerwise;
  work.magnitude = false;
  work.full.assign(work.groups(), 1);  // random keys use all 31 bits
  std::optional<c10::cuda::CUDAGuard> guard;
  if (!masks.empty()) {
    cuda::check_cuda(masks[0], "masks[0]");
    guard.emplace(masks[0].device());
  }
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < work.tensors; ++i) {
    const at::Tensor m = masks[i].contiguous();
    const bool packed = m.scalar_type() == at::kByte;
    at::Tensor out = at::empty(m.sizes(), m.options());
    outs.push_back(out);

    SelectSegment s{};
    s.mask = static_cast<const uint8_t*>(m.data_ptr());
    s.out = static_cast<uint8_t*>(out.data_ptr());
    if (packed) {  // positions: every bit of (rows, 8 * ld); padding bits are zero, so dead
      s.ld = m.size(1);
      s.cols = 8 * s.ld;
      s.numel = m.size(0) * s.cols;
      s.items = m.size(0) * s.ld;
    } else {
      s.cols = gemm_view(m.sizes()).second;
      s.numel = m.numel();
      s.items = ceil_div(s.numel, 8);
    }
    s.stream = selection::random_stream(static_cast<uint64_t>(seed), i);
    s.kind = cuda::kSelectRandom;
    s.mask_kind = packed ? cuda::kPackedMask : cuda::kBoolMask;
    s.group = work.group_of(i);
    s.tensor = static_cast<int32_t>(i);
    s.vec = vec_flags(nullptr, s.mask, s.mask_kind, s.out, s.cols);
    if (s.items == 0) continue;
    work.segs.push_back(s);
    work.keep_alive.push_back(m);
  }
  const Selected sel = run_selection(
      work, amounts, counts, masks.empty() ? at::Device(at::kCPU) : masks[0].device());
  return {outs, cpu_longs(sel.k)};
}

}  // namespace sparse_lottery
