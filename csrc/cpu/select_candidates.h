// The candidates of a selection write pass (internal to csrc/cpu/): the survivors whose keys
// fall in the bracket [lo, hi), recorded per part as (offset in the part, key) in slabs of kSlab
// taken from one pool as parts fill them, so part p's candidates are its slabs in order. Only
// the slabs used are touched: reserving the whole budget costs no memory. Each part also counts
// its candidates by the top kHistBits bits of key - lo, which finds the bucket of the t-th
// smallest key without another pass.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <memory>
#include <vector>

#include "select_blocks.h"

namespace sparse_lottery::cpu::select {

class Candidates {
 public:
  static constexpr int64_t kSlab = 2048;
  static constexpr int64_t kBytes = 2 * sizeof(uint32_t);
  static constexpr int kHistBits = 8;
  static constexpr int64_t kBuckets = int64_t{1} << kHistBits;

  // Room for `capacity` candidates of `parts` parts, keys in [lo, hi).
  void reset(int parts, int64_t capacity, uint32_t lo, int64_t hi) {
    slabs_ = (capacity + kSlab - 1) / kSlab;
    off_ = std::make_unique_for_overwrite<uint32_t[]>(slabs_ * kSlab);
    key_ = std::make_unique_for_overwrite<uint32_t[]>(slabs_ * kSlab);
    next_.store(0);
    owned_.assign(parts, {});
    size_.assign(parts, 0);
    full_.assign(parts, 0);
    lo_ = lo;
    width_ = static_cast<int>(std::bit_width(static_cast<uint64_t>(hi - lo - 1)));
    shift_ = std::max(0, width_ - kHistBits);
    hist_.assign(parts * kBuckets, 0);
  }

  void release() {
    off_.reset();
    key_.reset();
  }

  // Appends to part p (one thread at a time per part); false once the pool is spent.
  class Writer {
   public:
    Writer(Candidates& c, int p) : c_(c), p_(p), hist_(c.hist_.data() + p * kBuckets) {}
    Writer(const Writer&) = delete;
    ~Writer() { c_.size_[p_] += added_; }
    SL_ALWAYS_INLINE bool add(uint32_t off, uint32_t key) {
      if (room_ == 0 && !grab()) return false;
      *off_++ = off;
      *key_++ = key;
      ++hist_[(key - c_.lo_) >> c_.shift_];
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
    uint32_t* hist_;
    uint32_t* off_ = nullptr;
    uint32_t* key_ = nullptr;
    int64_t room_ = 0, added_ = 0;
  };

  int parts() const { return static_cast<int>(size_.size()); }
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

  struct Threshold {
    uint32_t key;         // T, the t-th smallest key
    int64_t ties;         // candidates with key T
    int64_t remove_ties;  // how many of them the first t take
  };

  // The t-th smallest key of all candidates (1 <= t <= their number): the bucket holding it
  // from the parts' counts, then its keys gathered and selected.
  Threshold kth(int64_t t) const {
    const int64_t buckets = int64_t{1} << (width_ - shift_);
    int64_t b = 0;
    for (;; ++b) {
      int64_t in_bucket = 0;
      for (int p = 0; p < parts(); ++p) in_bucket += hist_[p * kBuckets + b];
      if (in_bucket >= t || b + 1 == buckets) break;
      t -= in_bucket;
    }
    std::vector<uint32_t> keys;
    const uint32_t first = lo_ + (static_cast<uint32_t>(b) << shift_);
    for (int p = 0; p < parts(); ++p) {
      for_each(p, [&](uint32_t, uint32_t key) {
        if ((key - first) >> shift_ == 0) keys.push_back(key);
      });
    }
    TORCH_INTERNAL_ASSERT(t >= 1 && t <= static_cast<int64_t>(keys.size()),
                          "selection: rank ", t, " not among the candidates");
    std::nth_element(keys.begin(), keys.begin() + (t - 1), keys.end());
    Threshold th{keys[t - 1], 0, 0};
    int64_t below = 0;
    for (const uint32_t k : keys) {
      below += k < th.key;
      th.ties += k == th.key;
    }
    th.remove_ties = t - below;
    return th;
  }

 private:
  std::unique_ptr<uint32_t[]> off_, key_;
  int64_t slabs_ = 0;
  std::atomic<int64_t> next_{0};
  std::vector<std::vector<int32_t>> owned_;
  std::vector<int64_t> size_;
  std::vector<uint8_t> full_;
  uint32_t lo_ = 0;
  int width_ = 0, shift_ = 0;
  std::vector<uint32_t> hist_;  // per part: kBuckets counts of (key - lo_) >> shift_
};

}  // namespace sparse_lottery::cpu::select
