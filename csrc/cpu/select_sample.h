// Brackets of the CPU selection kernels (internal to csrc/cpu/): a range of keys [lo, hi) that
// holds the k-th smallest key of a group with overwhelming probability, and a central guess
// `mid` of it, found without a pass over the group. The caller checks the bracket with the
// exact counts of its write pass and falls back to the radix path when it missed.
//
// Magnitudes: the keys of the survivors of 32-element blocks at stratified random positions
// (one block in each of `blocks` equal slices of the group, at a hashed offset). The bracket is
// the sample's q-quantile +- kSampleSigmas standard errors, the error estimated with the blocks
// as clusters (neighbouring weights are often alike: the bracket widens instead of missing),
// rounded out to 2^15-key buckets. Sparse masks leave few survivors in a block: the sample then
// grows (up to 4x) before the caller gives up on it. Random keys are uniform: the binomial error
// suffices.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "select_blocks.h"
#include "select_parts.h"

namespace sparse_lottery::cpu::select {

constexpr int64_t kSampleBlocks = 8192;
constexpr int64_t kSampleMinKeys = 2048;
constexpr double kSampleSigmas = 4.5;
constexpr double kUniformSigmas = 6.0;
constexpr int kBucketShift = 15;  // the sample's histogram: 2^16 buckets of 2^15 keys

struct Bracket {
  uint32_t lo = 0, mid = 0;
  int64_t hi = 0;  // up to 2^31
};

// Sample cost (a random block, ~300 ns) against candidate cost (~20 ns each, their number
// falling as 1/sqrt(blocks)): the best number of blocks grows as total^(2/3).
inline int64_t sample_blocks(int64_t total) {
  return std::clamp<int64_t>(
      static_cast<int64_t>(std::pow(static_cast<double>(total) / 64, 2.0 / 3)), 256,
      std::min<int64_t>(kSampleBlocks, total / kBlock / 8));
}

// keys[32 s ...] <- the survivors' keys of sample block s, found[s] <- how many.
inline void gather_sample(const Source* src, const Parts& parts, int64_t blocks,
                          std::vector<uint32_t>& keys, std::vector<int32_t>& found) {
  keys.assign(blocks * kBlock, 0);
  found.assign(blocks, 0);
  const auto total = static_cast<double>(parts.total());
  constexpr int64_t kChunk = 256, kAhead = 8;  // blocks per task, random reads in flight
  dynamic_for(parts.threads(), (blocks + kChunk - 1) / kChunk, [&](int64_t chunk) {
    const int64_t b0 = chunk * kChunk, b1 = std::min(blocks, b0 + kChunk);
    std::pair<int64_t, int64_t> where[kChunk];  // (source, element)
    for (int64_t s = b0; s < b1; ++s) {
      const double u = static_cast<double>(selection::mix64(s) >> 11) * 0x1p-53;
      const int64_t g = parts.snap(static_cast<int64_t>((static_cast<double>(s) + u) * total /
                                                        static_cast<double>(blocks)));
      const int64_t i = parts.source_of(g);
      where[s - b0] = {i, g - parts.offset(i)};
    }
    for (int64_t s = b0; s < b1; ++s) {
      if (s + kAhead < b1) prefetch_block(src[where[s + kAhead - b0].first],
                                          where[s + kAhead - b0].second);
      const auto [i, e] = where[s - b0];
      const Source& source = src[i];
      const int64_t row = e / source.cols, col = e % source.cols;
      const int n = static_cast<int>(std::min<int64_t>(kBlock, source.cols - col));
      Block b;
      b.surv = 0;
      with_kinds(source, [&](auto key, auto mask) {
        load_block<decltype(key)::value, decltype(mask)::value>(source, row, col, n, b);
      });
      uint32_t key[kBlock];
      b.get(key);
      int here = 0;
      for (uint32_t rest = b.surv; rest; rest &= rest - 1)
        keys[s * kBlock + here++] = key[std::countr_zero(rest)];
      found[s] = here;
    }
  });
}

// Sampled bracket of the q-quantile of the group's survivors' keys; false when the sample holds
// too few survivors to trust.
inline bool sample_bracket(const Source* src, const Parts& parts, double q, Bracket& br) {
  int64_t blocks = sample_blocks(parts.total());
  std::vector<uint32_t> keys;
  std::vector<int32_t> found;
  gather_sample(src, parts, blocks, keys, found);
  const int64_t seen = std::accumulate(found.begin(), found.end(), int64_t{0});
  const int64_t most = std::min<int64_t>(4 * blocks, parts.total() / kBlock / 2);
  if (seen > 0 && seen < kSampleMinKeys && most > blocks) {  // sparse masks: a larger sample
    blocks = std::min(most, blocks * (2 * kSampleMinKeys + seen - 1) / seen);
    gather_sample(src, parts, blocks, keys, found);
  }
  int64_t m = 0;
  std::vector<uint32_t> hist(size_t{1} << (31 - kBucketShift), 0);
  uint32_t first = UINT32_MAX, last = 0;  // the buckets of the smallest and largest keys
  for (int64_t s = 0; s < blocks; ++s) {
    m += found[s];
    for (int j = 0; j < found[s]; ++j) {
      const uint32_t b = keys[s * kBlock + j] >> kBucketShift;
      ++hist[b];
      first = std::min(first, b);
      last = std::max(last, b);
    }
  }
  if (m < kSampleMinKeys) return false;
  // upto[b - first]: keys in buckets first..b; the bucket of the r-th smallest key (1-based)
  // and how many keys lie below it.
  std::vector<int64_t> upto(last - first + 1);
  for (int64_t b = first, sum = 0; b <= last; ++b) upto[b - first] = sum += hist[b];
  auto bucket_of = [&](double r) {
    const auto less = [](int64_t c, double v) { return static_cast<double>(c) < v; };
    const auto it = std::lower_bound(upto.begin(), upto.end() - 1, r, less);
    const int64_t i = it - upto.begin();
    return std::pair<int64_t, int64_t>{first + i, i == 0 ? 0 : upto[i - 1]};
  };
  auto each_key = [&](auto&& f) {
    for (int64_t s = 0; s < blocks; ++s)
      for (int j = 0; j < found[s]; ++j) f(s, keys[s * kBlock + j]);
  };
  const double rank = std::max(q * static_cast<double>(m), 1.0);
  // mid: the sample's quantile itself.
  const auto [xb, x_below] = bucket_of(rank);
  std::vector<uint32_t> in_x;
  each_key([&](int64_t, uint32_t k) {
    if (k >> kBucketShift == static_cast<uint32_t>(xb)) in_x.push_back(k);
  });
  if (in_x.empty()) return false;
  const auto r = std::clamp<int64_t>(static_cast<int64_t>(rank) - x_below, 1,
                                     static_cast<int64_t>(in_x.size()));
  std::nth_element(in_x.begin(), in_x.begin() + (r - 1), in_x.end());
  br.mid = in_x[r - 1];
  // Standard error of the sample's count of keys below the quantile's bucket, one cluster
  // (block) per stratum: the successive-difference estimator, which keeps the variation between
  // neighbouring blocks (rows of different scales) and drops the trends the strata already
  // remove (layers of different scales); never below the binomial error of independent keys.
  const auto x = static_cast<uint32_t>(xb) << kBucketShift;
  const double p = static_cast<double>(x_below) / static_cast<double>(m);
  std::vector<int32_t> below(blocks, 0);
  each_key([&](int64_t s, uint32_t k) { below[s] += k < x; });
  double sum_sq = 0;
  for (int64_t s = 1; s < blocks; ++s) {
    const double d = (below[s] - p * found[s]) - (below[s - 1] - p * found[s - 1]);
    sum_sq += d * d;
  }
  const double sd_rank = std::max(
      std::sqrt(sum_sq * static_cast<double>(blocks) / (2.0 * static_cast<double>(blocks - 1))),
      std::sqrt(q * (1 - q) * static_cast<double>(m)));
  const double margin = kSampleSigmas * sd_rank + 8;
  br.lo = rank - margin < 1 ? 0
                            : static_cast<uint32_t>(bucket_of(rank - margin).first)
                                  << kBucketShift;
  br.hi = rank + margin > static_cast<double>(m)
              ? int64_t{1} << 31
              : (bucket_of(rank + margin).first + 1) << kBucketShift;
  return true;
}

// Random keys are uniform on [0, 2^31): the (q S)-th smallest of S lies within kUniformSigmas
// binomial standard errors of q 2^31.
inline Bracket uniform_bracket(double q, double survivors) {
  constexpr double kKeys = 0x1p31;
  const double sd = std::sqrt(q * (1 - q) / survivors) + 1 / survivors;
  Bracket br;
  br.lo = static_cast<uint32_t>(std::clamp((q - kUniformSigmas * sd) * kKeys, 0.0, kKeys - 1));
  br.hi = static_cast<int64_t>(std::clamp((q + kUniformSigmas * sd) * kKeys + 1, 1.0, kKeys));
  br.hi = std::max<int64_t>(br.hi, int64_t{br.lo} + 1);
  br.mid = static_cast<uint32_t>(
      std::clamp(q * kKeys, static_cast<double>(br.lo), static_cast<double>(br.hi - 1)));
  return br;
}

}  // namespace sparse_lottery::cpu::select
