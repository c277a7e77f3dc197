// Parts of a selection group and its candidate store (internal to csrc/cpu/).
//
// The group's elements, in order (tensor after tensor, each row-major in its view), are cut into
// parts: ranges of whole 32-column blocks, so that no two parts write the same byte of a packed
// mask. Every pass walks the same parts and threads take them as they come free (a thread the OS
// pauses holds up one part, not a fixed share), so per-part counts of one pass place the work of
// the next, and the order of positions is the order of the parts.
#pragma once

#include <ATen/Parallel.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "select_blocks.h"

namespace sparse_lottery::cpu::select {

constexpr int64_t kMaxPart = int64_t{1} << 30;  // elements per part: uint32 counts and offsets
constexpr int64_t kPartMin = int64_t{1} << 20;  // elements per part when threads share a group
constexpr int kPartsPerThread = 8;

// Asks for huge pages for the 2 MiB pages inside [data, data + bytes) (Linux, when THP is
// "madvise"): memory written once right after allocation then costs a page fault per 2 MiB,
// not per 4 KiB (a 50 MB bool mask: ~25 faults instead of ~12000).
inline void advise_huge_pages(void* data, size_t bytes) {
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

// f(i) for i in [0, n), each taken by the next free thread of `threads`.
template <class F>
void dynamic_for(int threads, int64_t n, F&& f) {
  if (threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(threads, n), 1, [&](int64_t, int64_t) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) f(i);
  });
}

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

  // f(p) for every part, parts taken by free threads.
  template <class F>
  void each(F&& f) const {
    dynamic_for(threads_, count(), [&](int64_t p) { f(static_cast<int>(p)); });
  }

 private:
  const Source* src_;
  int threads_;
  std::vector<int64_t> offset_, split_;  // element offsets of the sources, part boundaries
};

// Candidates (offset in their part, key) recorded by the parts of a write pass, in slabs of
// kSlab taken from one pool as parts fill them: part p's candidates are its slabs, in order.
// Only the slabs used are touched, so reserving the whole budget costs no memory.
class Candidates {
 public:
  static constexpr int64_t kSlab = 2048;
  static constexpr int64_t kBytes = 2 * sizeof(uint32_t);

  void reset(int parts, int64_t capacity) {
    slabs_ = (capacity + kSlab - 1) / kSlab;
    off_ = std::make_unique_for_overwrite<uint32_t[]>(slabs_ * kSlab);
    key_ = std::make_unique_for_overwrite<uint32_t[]>(slabs_ * kSlab);
    next_.store(0);
    owned_.assign(parts, {});
    size_.assign(parts, 0);
    full_.assign(parts, 0);
  }

  // Appends to part p (called by one thread at a time per part); false once the pool is spent.
  class Writer {
   public:
    Writer(Candidates& c, int p) : c_(c), p_(p) {}
    Writer(const Writer&) = delete;
    ~Writer() { c_.size_[p_] += added_; }
    SL_ALWAYS_INLINE bool add(uint32_t off, uint32_t key) {
      if (room_ == 0 && !grab()) return false;
      *off_++ = off;
      *key_++ = key;
      --room_;
      ++added_;
      return true;
    }

   private:
    bool grab() {
      if (c_.full_[p_]) return false;
      const int64_t s = c_.next_.fetch_add(1, std::memory_order_relaxed);
      if (s >= c_.slabs_) {
        c_.full_[p_] = 1;
        return false;
      }
      c_.owned_[p_].push_back(static_cast<int32_t>(s));
      off_ = c_.off_.get() + s * kSlab;
      key_ = c_.key_.get() + s * kSlab;
      room_ = kSlab;
      return true;
    }
    Candidates& c_;
    int p_;
    uint32_t* off_ = nullptr;
    uint32_t* key_ = nullptr;
    int64_t room_ = 0, added_ = 0;
  };

  void release() {
    off_.reset();
    key_.reset();
  }

  int64_t size(int p) const { return size_[p]; }
  bool overflowed(int p) const { return full_[p] != 0; }

  // f(offset, key) for part p's candidates, in order.
  template <class F>
  void for_each(int p, F&& f) const {
    int64_t left = size_[p];
    for (const int32_t s : owned_[p]) {
      const uint32_t* off = off_.get() + int64_t{s} * kSlab;
      const uint32_t* key = key_.get() + int64_t{s} * kSlab;
      const int64_t n = std::min(left, kSlab);
      for (int64_t c = 0; c < n; ++c) f(off[c], key[c]);
      left -= n;
    }
  }

 private:
  std::unique_ptr<uint32_t[]> off_, key_;
  int64_t slabs_ = 0;
  std::atomic<int64_t> next_{0};
  std::vector<std::vector<int32_t>> owned_;
  std::vector<int64_t> size_;
  std::vector<uint8_t> full_;
};

}  // namespace sparse_lottery::cpu::select
