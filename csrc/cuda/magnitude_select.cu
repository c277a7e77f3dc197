// Selection kernels of magnitude_prune and random_prune: the histogram, find, tie-count, scan
// and write passes of a radix select over selection.h's 31-bit keys, every tensor of a call in
// one launch per pass. Contracts and the work layout are in select_launch.h.
//
// A thread handles items of 8 positions, kSelectUnroll items per step in a striped arrangement
// (item = step + u * kThreads + thread), all loaded before the first is used: 16-byte weight
// loads (two for float32) and 8-byte bool-mask loads where aligned. Within a block, positions
// are therefore visited in order (step, u, thread, bit), which the tie ranks of the write pass
// follow. Block-level branches (segment kind, group state) are uniform: every thread of a block
// serves the same segment.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <type_traits>

#include "select_launch.h"
#include "selection.h"

namespace sparse_lottery {
namespace cuda {
namespace {

namespace sel = ::sparse_lottery::selection;

static_assert(kSelectBins == 8 * kThreads, "find_kernel: 8 bins per thread in pass 0");

// The 8 positions of one item: their keys (0 where not computed) and flags.
struct Item {
  uint32_t key[8];
  uint32_t live;   // bit i: position i exists and survives
  uint32_t valid;  // bit i: position i exists
};

__device__ __forceinline__ void clear_item(Item& it) {
#pragma unroll
  for (int i = 0; i < 8; ++i) it.key[i] = 0;
  it.live = 0;
  it.valid = 0;
}

// The segment served by block b: the last s with block_start[s] <= b (block_start is strictly
// increasing, block_start[0] = 0).
__device__ __forceinline__ int find_segment(const int64_t* __restrict__ block_start, int n,
                                            int64_t b) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (block_start[mid] <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Bit i: byte i of the 8 bytes in v is nonzero.
__device__ __forceinline__ uint32_t nonzero_bytes(uint2 v) {
  uint32_t bits = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    bits |= (((v.x >> (8 * i)) & 0xffu) != 0u ? 1u : 0u) << i;
    bits |= (((v.y >> (8 * i)) & 0xffu) != 0u ? 1u : 0u) << (i + 4);
  }
  return bits;
}

// 4 flag bits -> 4 bool bytes (0 or 1) in one word, byte i = bit i.
__device__ __forceinline__ uint32_t spread_bytes(uint32_t bits) {
  return (bits & 1u) | (((bits >> 1) & 1u) << 8) | (((bits >> 2) & 1u) << 16) |
         (((bits >> 3) & 1u) << 24);
}

template <int K>
__device__ __forceinline__ uint32_t magnitude_key(uint32_t bits) {
  if constexpr (K == kSelectF32) {
    return sel::key_from_float_bits(bits);
  } else if constexpr (K == kSelectBF16) {
    return sel::key_from_bfloat16_bits(static_cast<uint16_t>(bits));
  } else {
    return sel::key_from_half_bits(static_cast<uint16_t>(bits));
  }
}

// Item j of segment s (0 <= j < s.items). Keys are computed for the survivors, and for every
// existing position when all_keys (the NaN check of pass 0); the others stay 0.
template <int K>
__device__ __forceinline__ void load_item(const SelectSegment& s, int64_t j, bool all_keys,
                                          Item& it) {
  clear_item(it);
  int64_t e0;            // flat index of the item's first position
  int64_t row = 0, col = 0;  // its (row, col) in the GEMM view (packed masks)
  int n;                 // positions in the item: 8, fewer at the end of a row (packed) or tensor
  uint32_t live;
  if (s.mask_kind == kPackedMask) {
    row = j / s.ld;
    col = 8 * (j - row * s.ld);
    const int64_t left = s.cols - col;  // >= 1: byte j holds at least one column
    n = left < 8 ? static_cast<int>(left) : 8;
    e0 = row * s.cols + col;
    live = __ldg(s.mask + j);
  } else {
    e0 = 8 * j;
    const int64_t left = s.numel - e0;  // >= 1
    n = left < 8 ? static_cast<int>(left) : 8;
    live = 0xffu;
    if (s.mask_kind == kBoolMask) {
      if (n == 8 && (s.vec & kVecMask)) {
        live = nonzero_bytes(__ldg(reinterpret_cast<const uint2*>(s.mask + e0)));
      } else {
        live = 0;
        for (int i = 0; i < n; ++i) live |= (__ldg(s.mask + e0 + i) != 0 ? 1u : 0u) << i;
      }
    }
  }
  it.valid = (1u << n) - 1u;  // padding bits of a packed byte are never positions
  it.live = live & it.valid;

  if constexpr (K == kSelectRandom) {
    if (it.live == 0) return;
    if (s.mask_kind != kPackedMask) {
      row = e0 / s.cols;
      col = e0 - row * s.cols;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if ((it.live >> i) & 1u) it.key[i] = sel::random_key(s.stream, row, col);
      if (++col == s.cols) {  // a bool item may span rows; a packed one never does
        col = 0;
        ++row;
      }
    }
  } else {
    if (!all_keys && it.live == 0) return;
    using Bits = std::conditional_t<K == kSelectF32, unsigned int, unsigned short>;
    const Bits* w = static_cast<const Bits*>(s.weight) + e0;
    if (n == 8 && (s.vec & kVecWeight)) {
      if constexpr (K == kSelectF32) {
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(w));
        const uint4 b = __ldg(reinterpret_cast<const uint4*>(w) + 1);
        const uint32_t words[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) it.key[i] = magnitude_key<K>(words[i]);
      } else {
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(w));
        const uint32_t words[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // little endian: the low half is the earlier element
          it.key[2 * i] = magnitude_key<K>(words[i] & 0xffffu);
          it.key[2 * i + 1] = magnitude_key<K>(words[i] >> 16);
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {  // constant indices keep the keys in registers
        if (i < n) it.key[i] = magnitude_key<K>(__ldg(w + i));
      }
    }
  }
}

// Loads the kSelectUnroll items of one step of a chunk ending at j1 (empty past j1).
template <int K>
__device__ __forceinline__ void load_step(const SelectSegment& s, int64_t step, int64_t j1,
                                          bool all_keys, Item (&it)[kSelectUnroll]) {
#pragma unroll
  for (int u = 0; u < kSelectUnroll; ++u) {
    const int64_t j = step + int64_t(u) * kThreads + threadIdx.x;
    if (j < j1) {
      load_item<K>(s, j, all_keys, it[u]);
    } else {
      clear_item(it[u]);
    }
  }
}

// Writes item j's new flags: a packed byte (padding bits zero: bits only ever come from valid
// positions), or up to 8 bool bytes.
__device__ __forceinline__ void store_item(const SelectSegment& s, int64_t j, uint32_t bits) {
  if (s.mask_kind == kPackedMask) {
    s.out[j] = static_cast<uint8_t>(bits);
    return;
  }
  const int64_t e0 = 8 * j;
  const int64_t left = s.numel - e0;
  const int n = left < 8 ? static_cast<int>(left) : 8;
  if (n == 8 && (s.vec & kVecOut)) {
    *reinterpret_cast<uint2*>(s.out + e0) = make_uint2(spread_bytes(bits), spread_bytes(bits >> 4));
  } else {
    for (int i = 0; i < n; ++i) s.out[e0 + i] = static_cast<uint8_t>((bits >> i) & 1u);
  }
}

// Items [j0, j1) of a block's chunk.
struct Chunk {
  int64_t j0, j1;
};

__device__ __forceinline__ Chunk chunk_of(const SelectSegment& s, int64_t first_block,
                                          int64_t chunk_items) {
  const int64_t j0 = (static_cast<int64_t>(blockIdx.x) - first_block) * chunk_items;
  const int64_t end = j0 + chunk_items;
  return {j0, end < s.items ? end : s.items};
}

// ------------------------------------------------------------------------- histogram pass
template <int K>
__device__ __forceinline__ void hist_chunk(const SelectSegment& s, Chunk c, int pass,
                                           uint32_t prefix, uint32_t* bins, bool& nan) {
  const int shift = pass == 0 ? 20 : (pass == 1 ? 10 : 0);  // the digit's lowest bit
  const int high = shift + 10;                                 // bits above it (passes 1, 2)
  const uint32_t digit_mask = pass == 0 ? 0x7ffu : 0x3ffu;
  const bool all_keys = pass == 0 && K != kSelectRandom;
  for (int64_t step = c.j0; step < c.j1; step += kSelectStepItems) {
    Item it[kSelectUnroll];
    load_step<K>(s, step, c.j1, all_keys, it);
#pragma unroll
    for (int u = 0; u < kSelectUnroll; ++u) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t key = it[u].key[i];
        if (all_keys && ((it[u].valid >> i) & 1u) && key > sel::kInfKey) nan = true;
        if (((it[u].live >> i) & 1u) && (pass == 0 || (key >> high) == prefix)) {
          atomicAdd(&bins[(key >> shift) & digit_mask], 1u);
        }
      }
    }
  }
}

// (kThreads, 2): without a minimum, ptxas settles on 64 registers and spills.
__global__ void __launch_bounds__(kThreads, 2)
    hist_kernel(const SelectSegment* __restrict__ segs, const int64_t* __restrict__ block_start,
                int n_segs, int64_t chunk_items, int pass, const int64_t* __restrict__ state,
                unsigned long long* __restrict__ hist, unsigned long long* __restrict__ survivors,
                unsigned long long* __restrict__ nan_flags) {
  __shared__ uint32_t bins[kSelectBins];
  const int si = find_segment(block_start, n_segs, blockIdx.x);
  const SelectSegment s = segs[si];
  uint32_t prefix = 0;
  if (pass > 0) {  // uniform: the whole block leaves before any barrier
    const int64_t* st = state + int64_t(s.group) * kStateFields;
    if (st[kStateK] == 0 || (pass == 2 && st[kStateFull] == 0)) return;
    prefix = static_cast<uint32_t>(st[kStatePrefix]);
  }
  const int n_bins = pass == 0 ? kSelectBins : kSelectBins / 2;
  for (int d = threadIdx.x; d < n_bins; d += kThreads) bins[d] = 0;
  __syncthreads();

  const Chunk c = chunk_of(s, block_start[si], chunk_items);
  bool nan = false;
  switch (s.kind) {
    case kSelectF32: hist_chunk<kSelectF32>(s, c, pass, prefix, bins, nan); break;
    case kSelectBF16: hist_chunk<kSelectBF16>(s, c, pass, prefix, bins, nan); break;
    case kSelectF16: hist_chunk<kSelectF16>(s, c, pass, prefix, bins, nan); break;
    default: hist_chunk<kSelectRandom>(s, c, pass, prefix, bins, nan); break;
  }
  __syncthreads();

  unsigned long long* h = hist + int64_t(s.group) * kSelectBins;
  unsigned long long counted = 0;
  for (int d = threadIdx.x; d < n_bins; d += kThreads) {
    const uint32_t b = bins[d];
    if (b != 0) {
      atomicAdd(h + d, static_cast<unsigned long long>(b));
      counted += b;
    }
  }
  if (pass == 0) {
    if (counted != 0) atomicAdd(survivors + s.group, counted);
    if (__syncthreads_or(nan) && threadIdx.x == 0) nan_flags[s.tensor] = 1;
  }
}

// ------------------------------------------------------------------------- find
// Block g: bins d = thread * per + i (ascending keys); the bin holding the group's rank is the
// one with (survivors in lower bins) < rank <= (survivors in lower bins) + bin, found by exactly
// one thread.
__global__ void __launch_bounds__(kThreads)
    find_kernel(int64_t* __restrict__ state, unsigned long long* __restrict__ hist, int pass) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  constexpr int kPer = kSelectBins / kThreads;
  const int per = pass == 0 ? kPer : kPer / 2;
  int64_t* st = state + int64_t(blockIdx.x) * kStateFields;
  unsigned long long* h = hist + int64_t(blockIdx.x) * kSelectBins;

  unsigned long long bin[kPer];
  unsigned long long sum = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    bin[i] = 0;
    if (i < per) {
      const int d = threadIdx.x * per + i;
      bin[i] = h[d];
      h[d] = 0;  // ready for the next pass (only this thread touches bin d)
      sum += bin[i];
    }
  }
  const int64_t k = st[kStateK];
  const int64_t full = st[kStateFull];
  const int64_t prefix = st[kStatePrefix];
  const auto rank = static_cast<unsigned long long>(st[kStateRank]);
  unsigned long long below = 0;
  Scan(scan).ExclusiveSum(sum, below);
  __syncthreads();  // every thread has read the state row before one thread rewrites it
  if (k == 0 || (pass == 2 && full == 0)) return;

#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    if (i < per && below < rank && rank <= below + bin[i]) {
      const int64_t digit = threadIdx.x * per + i;
      const int64_t found = pass == 0 ? digit : ((prefix << 10) | digit);
      st[kStatePrefix] = found;
      st[kStateRank] = static_cast<int64_t>(rank - below);
      st[kStateCount] = static_cast<int64_t>(bin[i]);
      if (pass == 2) st[kStateThreshold] = found;
      if (pass == 1 && full == 0) st[kStateThreshold] = found << 10;
    }
    below += bin[i];
  }
}

// ------------------------------------------------------------------------- tie counts
template <int K>
__device__ __forceinline__ unsigned long long count_ties(const SelectSegment& s, Chunk c,
                                                         uint32_t threshold) {
  unsigned long long ties = 0;
  for (int64_t step = c.j0; step < c.j1; step += kSelectStepItems) {
    Item it[kSelectUnroll];
    load_step<K>(s, step, c.j1, false, it);
#pragma unroll
    for (int u = 0; u < kSelectUnroll; ++u) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        ties += ((it[u].live >> i) & 1u) && it[u].key[i] == threshold ? 1u : 0u;
      }
    }
  }
  return ties;
}

__global__ void __launch_bounds__(kThreads)
    ties_kernel(const SelectSegment* __restrict__ segs, const int64_t* __restrict__ block_start,
                int n_segs, int64_t chunk_items, const int64_t* __restrict__ state,
                int64_t* __restrict__ tie_counts) {
  using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ typename Reduce::TempStorage reduce;
  const int si = find_segment(block_start, n_segs, blockIdx.x);
  const SelectSegment s = segs[si];
  const int64_t* st = state + int64_t(s.group) * kStateFields;
  if (st[kStateK] == 0 || st[kStateRank] >= st[kStateCount]) {  // uniform
    if (threadIdx.x == 0) tie_counts[blockIdx.x] = 0;
    return;
  }
  const auto threshold = static_cast<uint32_t>(st[kStateThreshold]);
  const Chunk c = chunk_of(s, block_start[si], chunk_items);
  unsigned long long ties = 0;
  switch (s.kind) {
    case kSelectF32: ties = count_ties<kSelectF32>(s, c, threshold); break;
    case kSelectBF16: ties = count_ties<kSelectBF16>(s, c, threshold); break;
    case kSelectF16: ties = count_ties<kSelectF16>(s, c, threshold); break;
    default: ties = count_ties<kSelectRandom>(s, c, threshold); break;
  }
  const unsigned long long total = Reduce(reduce).Sum(ties);
  if (threadIdx.x == 0) tie_counts[blockIdx.x] = static_cast<int64_t>(total);
}

// ------------------------------------------------------------------------- scan
__global__ void __launch_bounds__(kThreads) scan_kernel(int64_t* __restrict__ values, int n) {
  using Scan = cub::BlockScan<long long, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  long long carry = 0;
  for (int base = 0; base < n; base += kThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    const long long v = i < n ? static_cast<long long>(values[i]) : 0;
    long long before = 0, total = 0;
    Scan(scan).ExclusiveSum(v, before, total);
    if (i < n) values[i] = carry + before;
    carry += total;
    __syncthreads();  // scan storage reused by the next tile
  }
}

// ------------------------------------------------------------------------- write
enum WriteMode : int {
  kKeepAll = 0,        // k = 0: the new mask is the survivors
  kRemoveUpTo = 1,     // remove every survivor with key <= T
  kRemovePartial = 2,  // remove key < T, and the ties at T of rank < limit
};

using TieScan = cub::BlockScan<uint32_t, kThreads>;

template <int K>
__device__ __forceinline__ void write_chunk(const SelectSegment& s, Chunk c, int mode,
                                            uint32_t threshold, int64_t limit, int64_t tie_rank,
                                            typename TieScan::TempStorage& scan) {
  for (int64_t step = c.j0; step < c.j1; step += kSelectStepItems) {
    Item it[kSelectUnroll];
    load_step<K>(s, step, c.j1, false, it);
#pragma unroll
    for (int u = 0; u < kSelectUnroll; ++u) {
      uint32_t below = 0, ties = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t live = (it[u].live >> i) & 1u;
        below |= (live && it[u].key[i] < threshold ? 1u : 0u) << i;
        ties |= (live && it[u].key[i] == threshold ? 1u : 0u) << i;
      }
      uint32_t removed = 0;
      if (mode == kRemoveUpTo) {
        removed = below | ties;
      } else if (mode == kRemovePartial) {  // every thread of the block takes this branch
        uint32_t before = 0, total = 0;
        TieScan(scan).ExclusiveSum(static_cast<uint32_t>(__popc(ties)), before, total);
        __syncthreads();  // scan storage reused by the next item
        int64_t rank = tie_rank + before;  // the group-wide rank of this item's first tie
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if ((ties >> i) & 1u) {
            if (rank < limit) removed |= 1u << i;
            ++rank;
          }
        }
        removed |= below;
        tie_rank += total;
      }
      const int64_t j = step + int64_t(u) * kThreads + threadIdx.x;
      if (j < c.j1) store_item(s, j, it[u].live & ~removed);
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    write_kernel(const SelectSegment* __restrict__ segs, const int64_t* __restrict__ block_start,
                 int n_segs, int64_t chunk_items, const int64_t* __restrict__ state,
                 const int64_t* __restrict__ tie_offsets) {
  __shared__ typename TieScan::TempStorage scan;
  const int si = find_segment(block_start, n_segs, blockIdx.x);
  const SelectSegment s = segs[si];
  const int64_t* st = state + int64_t(s.group) * kStateFields;
  int mode = kKeepAll;
  uint32_t threshold = 0;
  int64_t limit = 0, tie_rank = 0;
  if (st[kStateK] > 0) {
    threshold = static_cast<uint32_t>(st[kStateThreshold]);
    limit = st[kStateRank];
    mode = limit < st[kStateCount] ? kRemovePartial : kRemoveUpTo;
    // Ties of the group in the blocks before this one (the group's blocks are consecutive).
    if (mode == kRemovePartial) {
      tie_rank = tie_offsets[blockIdx.x] - tie_offsets[st[kStateFirstBlock]];
    }
  }
  const Chunk c = chunk_of(s, block_start[si], chunk_items);
  switch (s.kind) {
    case kSelectF32: write_chunk<kSelectF32>(s, c, mode, threshold, limit, tie_rank, scan); break;
    case kSelectBF16: write_chunk<kSelectBF16>(s, c, mode, threshold, limit, tie_rank, scan); break;
    case kSelectF16: write_chunk<kSelectF16>(s, c, mode, threshold, limit, tie_rank, scan); break;
    default: write_chunk<kSelectRandom>(s, c, mode, threshold, limit, tie_rank, scan); break;
  }
}

}  // namespace

cudaError_t launch_select_hist(const SelectSegment* segs, const int64_t* block_start, int n_segs,
                               int n_blocks, int64_t chunk_items, int pass, const int64_t* state,
                               unsigned long long* hist, unsigned long long* survivors,
                               unsigned long long* nan_flags, cudaStream_t stream) {
  if (n_blocks <= 0) return cudaSuccess;
  hist_kernel<<<static_cast<unsigned>(n_blocks), kThreads, 0, stream>>>(
      segs, block_start, n_segs, chunk_items, pass, state, hist, survivors, nan_flags);
  return cudaGetLastError();
}

cudaError_t launch_select_find(int64_t* state, unsigned long long* hist, int groups, int pass,
                               cudaStream_t stream) {
  if (groups <= 0) return cudaSuccess;
  find_kernel<<<static_cast<unsigned>(groups), kThreads, 0, stream>>>(state, hist, pass);
  return cudaGetLastError();
}

cudaError_t launch_select_ties(const SelectSegment* segs, const int64_t* block_start, int n_segs,
                               int n_blocks, int64_t chunk_items, const int64_t* state,
                               int64_t* tie_counts, cudaStream_t stream) {
  if (n_blocks <= 0) return cudaSuccess;
  ties_kernel<<<static_cast<unsigned>(n_blocks), kThreads, 0, stream>>>(
      segs, block_start, n_segs, chunk_items, state, tie_counts);
  return cudaGetLastError();
}

cudaError_t launch_select_scan(int64_t* values, int n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  scan_kernel<<<1, kThreads, 0, stream>>>(values, n);
  return cudaGetLastError();
}

cudaError_t launch_select_write(const SelectSegment* segs, const int64_t* block_start,
                                int n_segs, int n_blocks, int64_t chunk_items,
                                const int64_t* state, const int64_t* tie_offsets,
                                cudaStream_t stream) {
  if (n_blocks <= 0) return cudaSuccess;
  write_kernel<<<static_cast<unsigned>(n_blocks), kThreads, 0, stream>>>(
      segs, block_start, n_segs, chunk_items, state, tie_offsets);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace sparse_lottery
