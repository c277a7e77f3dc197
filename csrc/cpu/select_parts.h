// Parts of a selection group (internal to csrc/cpu/).
//
// The group's elements, in order (tensor after tensor, each row-major in its view), are cut into
// parts: ranges of whole 32-column blocks, so that no two parts write the same byte of a packed
// mask. Every pass walks the same parts and threads take them as they come free (a thread the OS
// pauses holds up one part, not a fixed share), so per-part counts of one pass place the work of
// the next, and the order of positions is the order of the parts.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "dynamic_for.h"
#include "select_blocks.h"

namespace sparse_lottery::cpu::select {

constexpr int64_t kMaxPart = int64_t{1} << 30;  // elements per part: uint32 counts and offsets
constexpr int64_t kPartMin = int64_t{1} << 20;  // elements per part when threads share a group
constexpr int kPartsPerThread = 8;

using cpu::dynamic_for;

class Parts {
 public:
  Parts(const Source* src, int64_t count, int threads) : src_(src), threads_(threads) {
    offset_.assign(count + 1, 0);
    for (int64_t i = 0; i < count; ++i) offset_[i + 1] = offset_[i] + src[i].numel();
    const int64_t total = offset_[count];
    int64_t parts = threads <= 1 ? 1 : std::clamp<int64_t>(total / kPartMin, threads,
                                                          int64_t{kPartsPerThread} * threads);
    parts = std::max(parts, (total + kMaxPart - 1) / kMaxPart);
    split_.resize(parts + 1);
    for (int64_t p = 0; p <= parts; ++p)
      split_[p] = snap(static_cast<int64_t>(static_cast<__int128>(total) * p / parts));
  }

  int count() const { return static_cast<int>(split_.size()) - 1; }
  int threads() const { return threads_; }
  int64_t total() const { return offset_.back(); }
  int64_t first(int p) const { return split_[p]; }
  int64_t offset(int64_t i) const { return offset_[i]; }
  int64_t sources() const { return static_cast<int64_t>(offset_.size()) - 1; }

  // The source holding group position g < total().
  int64_t source_of(int64_t g) const {
    return std::upper_bound(offset_.begin(), offset_.end(), g) - offset_.begin() - 1;
  }

  // Group position g moved down to the start of its 32-column block (or kept at the end).
  int64_t snap(int64_t g) const {
    if (g >= total()) return total();
    const int64_t i = source_of(g), e = g - offset_[i], cols = src_[i].cols;
    return offset_[i] + e / cols * cols + (e % cols) / kBlock * kBlock;
  }

  // f(source index, e0, e1) for the sources' element ranges of part p, in order.
  template <class F>
  void for_segments(int p, F&& f) const {
    for (int64_t g = split_[p]; g < split_[p + 1];) {
      const int64_t i = source_of(g), end = std::min(split_[p + 1], offset_[i + 1]);
      f(i, g - offset_[i], end - offset_[i]);
      g = end;
    }
  }

  // f(p) for every part, parts taken by free threads (in order on this one when not parallel).
  template <class F>
  void each(F&& f, bool parallel = true) const {
    dynamic_for(parallel ? threads_ : 1, count(), [&](int64_t p) { f(static_cast<int>(p)); });
  }

 private:
  const Source* src_;
  int threads_;
  std::vector<int64_t> offset_, split_;  // element offsets of the sources, part boundaries
};

}  // namespace sparse_lottery::cpu::select
