// Launchers of the selection kernels (magnitude_select.cu): a radix select over the 31-bit keys
// of selection.h, every tensor of a call in one launch per pass. Plain C++ over raw pointers, no
// ATen (see launch.h); the host side is prune_ops.cpp.
//
// Work layout, shared by every kernel: the call's non-empty tensors are segments (a device array
// of SelectSegment, in tensor order). A segment is cut into items of 8 consecutive positions
// (bool or no mask: flat elements 8j .. 8j+7; packed mask: the 8 columns of packed byte j), and
// its items into chunks of `chunk_items`; block b serves chunk b - block_start[s] of the segment
// s with block_start[s] <= b < block_start[s + 1] (found by binary search). Blocks therefore
// visit the positions of a group (a tensor, or the whole pool) in order: tensor, then row-major.
//
// Per group, a state row of kStateFields int64 (device) carries the selection from pass to pass:
// the host sets k, the find kernel narrows (prefix, rank, count) after each histogram pass until
// the threshold key T is known: remove every survivor with key < T and the first `rank` of the
// `count` survivors with key == T (1 <= rank <= count when k > 0).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch.h"  // kThreads

namespace sparse_lottery {
namespace cuda {

enum SelectKind : int32_t { kSelectF32 = 0, kSelectBF16 = 1, kSelectF16 = 2, kSelectRandom = 3 };
enum SelectMask : int32_t { kNoMask = 0, kBoolMask = 1, kPackedMask = 2 };
// SelectSegment::vec bits: the aligned fast paths a segment may take.
constexpr int32_t kVecWeight = 1;  // 16-byte weight loads (whole items start 16-byte aligned)
constexpr int32_t kVecMask = 2;    // 8-byte loads of a bool mask
constexpr int32_t kVecOut = 4;     // 8-byte stores of a bool output

struct SelectSegment {
  const void* weight;    // contiguous weights (magnitude kinds); nullptr for kSelectRandom
  const uint8_t* mask;   // contiguous mask: bool (numel bytes) or packed (rows, ld); or nullptr
  uint8_t* out;          // new mask, contiguous: packed (rows, ld) if mask_kind is packed, else
                         // bool (numel bytes)
  int64_t numel;         // positions (packed random: rows * 8 * ld)
  int64_t cols;          // columns of the GEMM view (packed random: 8 * ld)
  int64_t ld;            // bytes per packed row (packed only)
  int64_t items;         // items of 8 positions: packed ? rows * ld : ceil(numel / 8); > 0
  uint64_t stream;       // selection::random_stream(seed, tensor) for kSelectRandom
  int32_t kind;          // SelectKind
  int32_t mask_kind;     // SelectMask
  int32_t group;         // state row
  int32_t tensor;        // index in the call (NaN flags)
  int32_t vec;           // kVec* bits
  int32_t pad;
};
static_assert(sizeof(SelectSegment) % sizeof(int64_t) == 0, "uploaded as int64 words");

// Fields of a group's state row.
enum SelectState : int {
  kStateK = 0,           // survivors to remove (host)
  kStateRank = 1,        // rank (1-based) of the k-th smallest key inside the current bucket
  kStatePrefix = 2,      // key bits found so far (11, then 21, then 31)
  kStateCount = 3,       // survivors in the current bucket
  kStateFull = 4,        // 1: a third pass (bits 9..0) is needed; 0: every key of the group
                         // has its low 10 bits zero (bfloat16 and float16 only) (host)
  kStateFirstBlock = 5,  // first block of the group (host)
  kStateThreshold = 6,   // T once known, else -1 (host sets -1)
  kStateFields = 8,
};
constexpr int kSelectBins = 2048;        // global histogram words per group (pass 0: 11 bits)
constexpr int kSelectUnroll = 4;         // items per thread and step, loaded before first use
constexpr int64_t kSelectStepItems = int64_t(kThreads) * kSelectUnroll;  // items per block step

// Histogram pass `pass` (0: bits 30..20 of every survivor; 1: bits 19..10 of the survivors whose
// bits 30..20 equal the group's prefix; 2: bits 9..0 under a 21-bit prefix) added into
// hist[group * kSelectBins + digit] (uint64, zeroed before pass 0; the find kernel re-zeroes it).
// Pass 0 also adds each group's survivors into survivors[group] and sets nan_flags[tensor] = 1
// when a magnitude tensor holds a NaN anywhere (masked or not). Passes 1 and 2 skip the blocks of
// groups with k = 0 (and, pass 2, of groups that are not full). `state` is unused in pass 0.
cudaError_t launch_select_hist(const SelectSegment* segs, const int64_t* block_start, int n_segs,
                               int n_blocks, int64_t chunk_items, int pass, const int64_t* state,
                               unsigned long long* hist, unsigned long long* survivors,
                               unsigned long long* nan_flags, cudaStream_t stream);

// One block per group: finds the bucket holding the group's rank in the histogram of `pass`,
// narrows the state row, and zeroes the histogram for the next pass.
cudaError_t launch_select_find(int64_t* state, unsigned long long* hist, int groups, int pass,
                               cudaStream_t stream);

// tie_counts[b] = survivors with key == T in block b's chunk, for groups that remove only part
// of their ties (0 < rank < count); 0 for every other block.
cudaError_t launch_select_ties(const SelectSegment* segs, const int64_t* block_start, int n_segs,
                               int n_blocks, int64_t chunk_items, const int64_t* state,
                               int64_t* tie_counts, cudaStream_t stream);

// In-place exclusive prefix sum of n int64 values (one block: n is the block count, small).
cudaError_t launch_select_scan(int64_t* values, int n, cudaStream_t stream);

// Writes every segment's new mask: survivor and not (key < T, or key == T and tie rank < rank).
// tie_offsets: the exclusive scan of launch_select_ties' counts, needed (else nullptr) when some
// group removes only part of its ties.
cudaError_t launch_select_write(const SelectSegment* segs, const int64_t* block_start,
                                int n_segs, int n_blocks, int64_t chunk_items,
                                const int64_t* state, const int64_t* tie_offsets,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace sparse_lottery
