// The exact selection of the CPU selection kernels (internal to csrc/cpu/): removes the k
// surviving elements with the smallest keys from one group of tensors (selection.h), ties at the
// threshold key broken by position, writing the new masks directly.
//
// A bracket [lo, hi) of keys holding the k-th smallest is found first; one write pass over the
// parts (select_parts.h) then makes every new mask: survivors below lo removed, at or above hi
// kept, inside kept and recorded as candidates. The pass's counts give the rank t of the last
// removed key among the candidates; its key T and the ties at T to remove follow from the
// candidates alone, and only candidates are fixed up, in position order.
//
// The bracket: (1) sampled, for large groups: the keys of 32-element blocks at stratified random
// positions; the bracket is the sample's quantile +- kSampleSigmas standard errors (estimated
// with the blocks as clusters, so correlated neighbours widen it), rounded out to 2^15-key
// buckets. Random keys need no sample: they are uniform. The write pass checks that the bracket
// holds the k-th key and that the candidates fit the budget; when not (rare), (2) radix:
// histogram passes of the survivors' keys, 16 bits at a time (per-part uint32 counts, summed in
// 64 bits), narrow the bucket holding the k-th key until its survivors fit the budget or it is a
// single key T, whose ties each part then removes itself (it knows how many are its own).
// A histogram pass costs ~4x a write pass (a scalar increment per element), hence (1).
//
// Extra memory: the candidates (8 bytes each, at most `budget` bytes), the sample (<= 1 MiB),
// and for the radix path a 2^16-entry histogram per part; nothing proportional to the group.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "select_block_ops.h"
#include "select_blocks.h"
#include "select_parts.h"
#include "select_sample.h"

namespace sparse_lottery::cpu::select {

constexpr int64_t kSampleMin = int64_t{1} << 20;  // elements of a group worth a bracket
constexpr int kCandidateBits = 8;    // the candidates' histogram: 2^8 buckets
constexpr int64_t kCandidateBuckets = int64_t{1} << kCandidateBits;

struct Outcome {
  int64_t survivors = 0;
  int64_t removed = 0;
  uint32_t threshold_key = 0;  // the largest removed key when removed > 0
  double requested = 0;        // k when it exceeds the survivors
  bool exceeds = false;        // k > survivors: the masks are not complete
  bool nan = false;            // a weight of the group is NaN: the masks are not complete
};

class GroupSelect {
 public:
  // sources[0..count): the group, run on `threads` threads; nan[i] is set when source i holds
  // a NaN. Candidates may use up to `budget` bytes.
  GroupSelect(const Source* sources, int64_t count, int threads, int64_t budget, uint8_t* nan)
      : src_(sources), nan_(nan), budget_(budget), parts_(sources, count, threads),
        stats_(parts_.count()) {}

  // Removes k = counts ? amount : round-half-even(amount * survivors) survivors.
  Outcome run(double amount, bool counts) {
    Outcome out;
    if (amount == 0) {  // k = 0 whatever the survivors: one pass copies the masks
      write(0, 0, Inside::kKeep, true);
      out.nan = any_nan();
      return out;
    }
    if (parts_.total() >= kSampleMin && bracketed(amount, counts, out)) return out;
    if (!out.nan && !out.exceeds) radix(amount, counts, out);
    return out;
  }

 private:
  enum class Inside { kKeep, kRecord, kTies };
  struct PartStats {
    int64_t survivors = 0, below = 0, inside = 0;
  };
  struct Threshold {
    uint32_t key;         // T
    int64_t ties;         // candidates with key T
    int64_t remove_ties;  // of which the first ones are removed
  };

  const Source* src_;
  uint8_t* nan_;
  int64_t budget_;
  Parts parts_;
  std::vector<PartStats> stats_;     // of the last write pass
  std::vector<uint32_t> hist_;       // radix: per-part histograms, `stride_` apart
  int64_t stride_ = 0;
  Candidates cand_;
  std::vector<uint32_t> cand_hist_;  // per part: counts of (key - lo) >> cand_shift_
  int cand_shift_ = 0;
  std::vector<int64_t> allowance_;   // kTies: ties each part removes
  uint32_t mid_ = 0;                 // kRecord: candidates below mid_ are removed provisionally

  // Sets out.survivors and out.removed, or out.exceeds and false when k > survivors.
  static bool set_k(double amount, bool counts, int64_t survivors, Outcome& out) {
    out.survivors = survivors;
    const double k = counts ? amount : std::nearbyint(amount * static_cast<double>(survivors));
    if (k > static_cast<double>(survivors)) {
      out.exceeds = true;
      out.requested = k;
      return false;
    }
    out.removed = static_cast<int64_t>(k);
    return true;
  }

  // ----------------------------------------------------------------------- bracket
  // True when done (or an error is set); false to fall back to the radix path.
  bool bracketed(double amount, bool counts, Outcome& out) {
    Bracket br;
    if (src_[0].key == KeyKind::kRandom) {  // a group of random keys only: uniform keys
      const auto survivors = static_cast<double>(count_survivors());
      const double k = counts ? amount : std::nearbyint(amount * survivors);
      if (survivors == 0 || k > survivors) return false;
      br = uniform_bracket(k / survivors, survivors);
    } else {
      const double q = counts ? amount / static_cast<double>(count_survivors()) : amount;
      if (!(q <= 1.0) || !sample_bracket(src_, parts_, q, br)) return false;
    }
    if (budget_ / Candidates::kBytes < Candidates::kSlab) return false;
    cand_.reset(parts_.count(), budget_ / Candidates::kBytes);
    mid_ = br.mid;
    const uint32_t lo = br.lo;
    const int64_t hi = br.hi;
    write(lo, hi, Inside::kRecord, true);
    if ((out.nan = any_nan())) return true;
    PartStats all;
    bool overflow = false;
    for (int p = 0; p < parts_.count(); ++p) {
      all.survivors += stats_[p].survivors;
      all.below += stats_[p].below;
      all.inside += stats_[p].inside;
      overflow |= cand_.overflowed(p);
    }
    if (!set_k(amount, counts, all.survivors, out)) return true;
    if (overflow || out.removed <= all.below || out.removed > all.below + all.inside) {
      out = Outcome{};
      cand_.release();
      return false;
    }
    const int width = static_cast<int>(std::bit_width(static_cast<uint64_t>(hi - lo - 1)));
    out.threshold_key = finish(lo, width, out.removed - all.below);
    return true;
  }

  // Survivors of the group, from the masks alone.
  int64_t count_survivors() {
    std::vector<int64_t> found(parts_.count(), 0);
    parts_.each([&](int p) {
      parts_.for_segments(p, [&](int64_t i, int64_t e0, int64_t e1) {
        with_kinds(src_[i], [&](auto, auto mask) {
          found[p] += count_mask<decltype(mask)::value>(src_[i], e0, e1);
        });
      });
    });
    int64_t sum = 0;
    for (const int64_t f : found) sum += f;
    return sum;
  }

  // -------------------------------------------------------------------------- radix
  void radix(double amount, bool counts, Outcome& out) {
    const int bits = std::clamp(
        static_cast<int>(std::bit_width(static_cast<uint64_t>(parts_.total()))) - 2, 8, 16);
    uint32_t lo = 0;
    int width = 31, shift = 31 - bits;
    histogram(lo, width, shift, true);
    if ((out.nan = any_nan())) return;
    int64_t survivors = 0;
    for (int p = 0; p < parts_.count(); ++p)
      for (int64_t b = 0; b < stride_ - 1; ++b) survivors += hist(p)[b];
    if (!set_k(amount, counts, survivors, out)) return;
    if (out.removed == 0) {
      write(0, 0, Inside::kKeep, false);
      return;
    }
    // Narrow [lo, lo + 2^width) to the bucket holding the t-th smallest key.
    int64_t t = out.removed;
    std::vector<int64_t> in_part(parts_.count());
    while (true) {
      const int64_t buckets = int64_t{1} << (width - shift);
      int64_t below = 0, b = 0;
      for (;; ++b) {
        int64_t c = 0;
        for (int p = 0; p < parts_.count(); ++p) c += hist(p)[b];
        if (below + c >= t || b + 1 == buckets) break;
        below += c;
      }
      t -= below;
      lo += static_cast<uint32_t>(b) << shift;
      width = shift;
      int64_t inside = 0;
      for (int p = 0; p < parts_.count(); ++p) inside += (in_part[p] = hist(p)[b]);
      TORCH_INTERNAL_ASSERT(t >= 1 && t <= inside, "selection: rank ", t, " not in its bucket");
      if (width == 0) {  // the single key T = lo: each part removes its share of the ties
        allowance_.assign(parts_.count(), 0);
        int64_t left = t;
        for (int p = 0; p < parts_.count(); ++p)
          left -= (allowance_[p] = std::min(left, in_part[p]));
        write(lo, int64_t{lo} + 1, Inside::kTies, false);
        out.threshold_key = lo;
        return;
      }
      if (inside * Candidates::kBytes <= budget_) {
        hist_ = {};  // released before the candidates peak
        int64_t slabs = 0;
        for (const int64_t n : in_part) slabs += (n + Candidates::kSlab - 1) / Candidates::kSlab;
        cand_.reset(parts_.count(), slabs * Candidates::kSlab);
        mid_ = lo;
        write(lo, int64_t{lo} + (int64_t{1} << width), Inside::kRecord, false);
        for (int p = 0; p < parts_.count(); ++p)
          TORCH_INTERNAL_ASSERT(cand_.size(p) == in_part[p], "selection: counts changed");
        out.threshold_key = finish(lo, width, t);
        return;
      }
      shift = width - std::min(16, width);
      histogram(lo, width, shift, false);
    }
  }

  uint32_t* hist(int p) { return hist_.data() + p * stride_; }

  // Per part: counts of the survivors' (key - lo) >> shift for keys in [lo, lo + 2^width).
  void histogram(uint32_t lo, int width, int shift, bool check_nan) {
    const int64_t buckets = int64_t{1} << (width - shift);
    stride_ = buckets + 1;  // + the slot of everything else
    hist_.assign(parts_.count() * stride_, 0);
    parts_.each([&](int p) {
      uint32_t* h = hist(p);
      parts_.for_segments(p, [&](int64_t i, int64_t e0, int64_t e1) {
        const Source& s = src_[i];
        const bool nan_check = check_nan && s.key != KeyKind::kRandom;
        MaxKey m;
        with_kinds(s, [&](auto key, auto mask) {
          for_blocks<decltype(key)::value, decltype(mask)::value>(
              s, e0, e1, [&](const Block& b, int64_t, int64_t, int64_t) SL_INLINE_LAMBDA {
                histogram_block(b, lo, width, shift, static_cast<uint32_t>(buckets), h);
                if (nan_check) m.add(b);
              });
        });
        if (nan_check && m.get() > selection::kInfKey) flag_nan(i);
      });
    });
  }

  // ---------------------------------------------------------------------- write pass
  // Writes every new mask: survivors with keys below lo removed, at or above hi kept; inside
  // kept, or, for kRecord, removed below mid_ and recorded as candidates (counted by
  // (key - lo) >> cand_shift_), or, for kTies, the first allowance_[p] of part p removed.
  // lo = hi = 0 keeps every survivor.
  void write(int64_t lo, int64_t hi, Inside mode, bool check_nan) {
    const auto lo_m1 = static_cast<int32_t>(lo - 1), hi_m1 = static_cast<int32_t>(hi - 1);
    const bool ties = mode == Inside::kTies, record = mode == Inside::kRecord;
    const auto mid_m1 = static_cast<int32_t>(int64_t{mid_} - 1);
    if (record) {
      const int width = static_cast<int>(std::bit_width(static_cast<uint64_t>(hi - lo - 1)));
      cand_shift_ = std::max(0, width - kCandidateBits);
      cand_hist_.assign(parts_.count() * kCandidateBuckets, 0);
    }
    const int shift = cand_shift_;
    parts_.each([&](int p) {
      PartStats st;
      int64_t allowance = ties ? allowance_[p] : 0;
      uint32_t* h = record ? cand_hist_.data() + p * kCandidateBuckets : nullptr;
      std::optional<Candidates::Writer> out;
      if (record) out.emplace(cand_, p);
      bool room = record;
      parts_.for_segments(p, [&](int64_t i, int64_t e0, int64_t e1) {
        const Source& s = src_[i];
        const int64_t base = parts_.offset(i) - parts_.first(p);  // element e is base + e
        const bool nan_check = check_nan && s.key != KeyKind::kRandom;
        MaxKey m;
        with_kinds(s, [&](auto key, auto mask) {
          constexpr MaskKind M = decltype(mask)::value;
          for_blocks<decltype(key)::value, M>(
              s, e0, e1, [&](const Block& b, int64_t row, int64_t col, int64_t e) SL_INLINE_LAMBDA {
                const uint32_t above_lo = bits_greater(b, lo_m1);
                const uint32_t inside = b.surv & above_lo & ~bits_greater(b, hi_m1);
                uint32_t keep = b.surv & above_lo;
                st.survivors += std::popcount(b.surv);
                st.below += std::popcount(b.surv & ~above_lo);
                if (inside) {
                  st.inside += std::popcount(inside);
                  if (ties) {
                    for (uint32_t rest = inside; rest && allowance > 0; --allowance) {
                      keep &= ~(rest & (0u - rest));  // the lowest tie still kept
                      rest &= rest - 1;
                    }
                  } else if (record) {
                    keep &= ~(inside & ~bits_greater(b, mid_m1));
                  }
                  if (room) {
                    uint32_t key[kBlock];
                    b.get(key);
                    for (uint32_t rest = inside; rest && room; rest &= rest - 1) {
                      const int j = std::countr_zero(rest);
                      room = out->add(static_cast<uint32_t>(base + e + j), key[j]);
                      h[(key[j] - static_cast<uint32_t>(lo)) >> shift] += room;
                    }
                  }
                }
                write_block<M>(s, row, col, b.n, keep);
                if (nan_check) m.add(b);
              });
        });
        if (nan_check && m.get() > selection::kInfKey) flag_nan(i);
      });
      TORCH_INTERNAL_ASSERT(allowance == 0, "selection: part ", p, " found fewer ties");
      stats_[p] = st;
    });
  }

  // -------------------------------------------------------------------- candidates
  // The candidates (keys in [lo, lo + 2^width)) hold the t-th smallest remaining key T, the
  // last removed: the candidates below T and the first ties at T (position order) are removed,
  // the others kept, flipping those the write pass guessed otherwise (key < mid_). Returns T.
  uint32_t finish(uint32_t lo, int width, int64_t t) {
    const Threshold th = kth_key(lo, width, t);
    // Ties at T removed per part: all of them when every tie goes, else the first ones.
    std::vector<int64_t> take(parts_.count(), INT64_MAX);
    if (th.remove_ties < th.ties) {
      parts_.each([&](int p) {
        take[p] = 0;
        cand_.for_each(p, [&](uint32_t, uint32_t key) { take[p] += key == th.key; });
      });
      int64_t left = th.remove_ties;
      for (int p = 0; p < parts_.count(); ++p) left -= (take[p] = std::min(left, take[p]));
    }
    parts_.each([&](int p) {  // flip the candidates the write pass guessed wrong
      const int64_t first = parts_.first(p);
      int64_t ties = take[p], i = parts_.source_of(first);
      cand_.for_each(p, [&](uint32_t off, uint32_t key) {
        bool removed = key < th.key;
        if (key == th.key && ties > 0) {
          removed = true;
          --ties;
        }
        if (removed == (key < mid_)) return;
        const int64_t g = first + off;
        while (parts_.offset(i + 1) <= g) ++i;
        set_element(src_[i], g - parts_.offset(i), !removed);
      });
    });
    return th.key;
  }

  // The t-th smallest candidate key T (all in [lo, lo + 2^width)): the write pass counted the
  // candidates of each part by (key - lo) >> cand_shift_; the keys of T's bucket are gathered
  // and selected.
  Threshold kth_key(uint32_t lo, int width, int64_t t) const {
    const int shift = std::max(0, width - kCandidateBits);
    TORCH_INTERNAL_ASSERT(shift == cand_shift_, "selection: candidate buckets changed");
    const int64_t buckets = int64_t{1} << (width - shift);
    int64_t b = 0;
    for (;; ++b) {
      int64_t in_bucket = 0;
      for (int p = 0; p < parts_.count(); ++p) in_bucket += cand_hist_[p * kCandidateBuckets + b];
      if (in_bucket >= t || b + 1 == buckets) break;
      t -= in_bucket;
    }
    std::vector<uint32_t> keys;
    const uint32_t first = lo + (static_cast<uint32_t>(b) << shift);
    for (int p = 0; p < parts_.count(); ++p) {
      cand_.for_each(p, [&](uint32_t, uint32_t key) {
        if ((key - first) >> shift == 0) keys.push_back(key);
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

  bool any_nan() const {
    return std::any_of(nan_, nan_ + parts_.sources(), [](uint8_t f) { return f != 0; });
  }

  void flag_nan(int64_t i) {
    std::atomic_ref<uint8_t>(nan_[i]).store(1, std::memory_order_relaxed);
  }
};

}  // namespace sparse_lottery::cpu::select
