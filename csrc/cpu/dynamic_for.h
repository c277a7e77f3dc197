// Dynamic scheduling for the CPU kernels (internal to csrc/cpu/): work items taken by whichever
// thread comes free, so a thread the OS pauses (or a heavy item) holds up one item, not a fixed
// share of them.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace sparse_lottery::cpu {

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

}  // namespace sparse_lottery::cpu
