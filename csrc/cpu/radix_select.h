// The exact selection of the CPU selection kernels (internal to csrc/cpu/): removes the k
// surviving elements with the smallest keys from one group of tensors (selection.h), ties at the
// threshold key broken by position, writing the new masks directly.
//
// A bracket [lo, hi) of keys holding the k-th smallest, and a guess mid of it, come first
// (select_sample.h: from a sample of ~0.5% of the blocks, or for random keys from their uniform
// law). One write pass over the parts (select_parts.h) then makes every new mask: survivors below
// lo removed, at or above hi kept, inside removed below mid and kept above, and recorded as
// candidates. The pass's exact counts give the rank t of the last removed key among the
// candidates; its key T and the ties at T to remove follow from the candidates alone, and only
// the candidates the guess got wrong (those between mid and T) are rewritten, in position order.
//
// When the bracket misses the k-th key or its candidates overflow the budget (rare: heavy ties,
// strongly correlated weights), or the group is small, the radix path runs instead: histogram
// passes of the survivors' keys, 16 bits at a time (per-part uint32 counts, summed in 64 bits),
// narrow the bucket holding the k-th key until its survivors fit the budget (then a write pass
// records them as above) or it is a single key T, whose first ties each part removes itself:
// the histogram told it how many of them are its own. A histogram pass costs about four write
// passes (one scalar increment per element), hence the sampled bracket first.
//
// Extra memory: the candidates (8 bytes each, at most `budget` bytes), the sample (at most
// 1.3 MiB, freed before the write pass), for the radix path a histogram of at most 2^16 uint32
// per part and about 1/8 byte per element in all (1 KiB per part at least; freed before the
// candidates); nothing else
// proportional to the group.
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
#include "select_candidates.h"
#include "select_parts.h"
#include "select_sample.h"

namespace sparse_lottery::cpu::select {

constexpr int64_t kSampleMin = int64_t{1} << 20;  // elements of a group worth a bracket
constexpr int64_t kParallelFixUp = int64_t{1} << 20;  // candidates worth a parallel fix-up

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

  const Source* src_;
  uint8_t* nan_;
  int64_t budget_;
  Parts parts_;
  std::vector<PartStats> stats_;     // of the last write pass
  std::vector<uint32_t> hist_;       // radix: per-part histograms, `stride_` apart
  int64_t stride_ = 0;
  Candidates cand_;
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
    cand_.reset(parts_.count(), budget_ / Candidates::kBytes, br.lo, br.hi);
    mid_ = br.mid;
    write(br.lo, br.hi, Inside::kRecord, true);
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
    out.threshold_key = finish(out.removed - all.below);
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
    // Digits of up to 16 bits, fewer for small groups: the histograms (one per part) stay
    // within about 1/8 byte per element, 3% of fp32 keys.
    const int64_t per_bin = int64_t{64} * parts_.count();
    const int bits = std::clamp(
        static_cast<int>(std::bit_width(static_cast<uint64_t>(parts_.total() / per_bin))), 8, 16);
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
        const int64_t hi = int64_t{lo} + (int64_t{1} << width);
        cand_.reset(parts_.count(), slabs * Candidates::kSlab, lo, hi);
        mid_ = lo;
        write(lo, hi, Inside::kRecord, false);
        for (int p = 0; p < parts_.count(); ++p)
          TORCH_INTERNAL_ASSERT(cand_.size(p) == in_part[p], "selection: counts changed");
        out.threshold_key = finish(t);
        return;
      }
      shift = width - std::min(bits, width);
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
  // kept, or, for kRecord, removed below mid_ and recorded as candidates, or, for kTies, the
  // first allowance_[p] of part p removed.
  // lo = hi = 0 keeps every survivor.
  void write(int64_t lo, int64_t hi, Inside mode, bool check_nan) {
    const auto lo_m1 = static_cast<int32_t>(lo - 1), hi_m1 = static_cast<int32_t>(hi - 1);
    const bool ties = mode == Inside::kTies, record = mode == Inside::kRecord;
    const auto mid_m1 = static_cast<int32_t>(int64_t{mid_} - 1);
    parts_.each([&](int p) {
      PartStats st;
      int64_t allowance = ties ? allowance_[p] : 0;
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
  // The candidates hold the t-th smallest remaining key T, the last removed: the candidates
  // below T and the first ties at T (position order) are removed, the others kept, flipping
  // those the write pass guessed otherwise (key < mid_). Returns T. A few candidates are quicker
  // on this thread than in a parallel region (to start and join; on busy cores especially).
  uint32_t finish(int64_t t) {
    const Candidates::Threshold th = cand_.kth(t);
    int64_t candidates = 0;
    for (int p = 0; p < parts_.count(); ++p) candidates += cand_.size(p);
    const bool parallel = candidates > kParallelFixUp;
    // Ties at T removed per part: all of them when every tie goes, else the first ones.
    std::vector<int64_t> take(parts_.count(), INT64_MAX);
    if (th.remove_ties < th.ties) {
      parts_.each([&](int p) {
        take[p] = 0;
        cand_.for_each(p, [&](uint32_t, uint32_t key) { take[p] += key == th.key; });
      }, parallel);
      int64_t left = th.remove_ties;
      for (int p = 0; p < parts_.count(); ++p) left -= (take[p] = std::min(left, take[p]));
    }
    parts_.each([&](int p) {
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
    }, parallel);
    return th.key;
  }

  bool any_nan() const {
    return std::any_of(nan_, nan_ + parts_.sources(), [](uint8_t f) { return f != 0; });
  }

  void flag_nan(int64_t i) {
    std::atomic_ref<uint8_t>(nan_[i]).store(1, std::memory_order_relaxed);
  }
};

}  // namespace sparse_lottery::cpu::select
