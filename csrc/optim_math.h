// The per-element maths of the masked optimisers, shared by the CPU (cpu/masked_optim.cpp) and
// CUDA (cuda/masked_optim.cu) kernels: plain C++, no ATen, host and device.
//
// Each update is torch.optim.SGD / torch.optim.AdamW (single-tensor path, foreach=False) for
// one element, in the accumulation type A (float for float32/bfloat16/float16, double for
// float64). Scalars that torch computes in Python (bias corrections, 1 - lr·wd, ...) are
// computed here in double on the host, in the same way, then rounded to A once.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#if !defined(__CUDACC__)
#include <bit>
#endif

#if defined(__CUDACC__)
#define SL_HD __host__ __device__ __forceinline__
#else
#define SL_HD inline
#endif

namespace sparse_lottery::optim {

// Hyperparameters of one masked_sgd_ call (the op's arguments).
struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
};

// Hyperparameters of one masked_adamw_ call, `step` counted from 1 (after the increment).
struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
  bool maximize;
};

template <typename A>
struct SgdUpdate {
  A neg_lr, momentum, one_minus_dampening, weight_decay;
  bool has_momentum, nesterov, maximize, first;

  explicit SgdUpdate(const SgdHyper& h)
      : neg_lr(static_cast<A>(-h.lr)), momentum(static_cast<A>(h.momentum)),
        one_minus_dampening(static_cast<A>(1.0 - h.dampening)),
        weight_decay(static_cast<A>(h.weight_decay)), has_momentum(h.momentum != 0.0),
        nesterov(h.nesterov), maximize(h.maximize), first(h.first_step) {}

  // p: the parameter, g: its gradient, buf: the momentum buffer (read unless first, written
  // when has_momentum; ignored otherwise).
  // Selects of computed values rather than branches.
  SL_HD void operator()(A& p, A g, A& buf) const {
    g = maximize ? -g : g;
    g = (weight_decay != A(0)) ? g + weight_decay * p : g;  // grad.add(param, alpha=wd)
    const A b = first ? g : buf * momentum + one_minus_dampening * g;  // clone / mul_.add_
    buf = has_momentum ? b : buf;
    g = has_momentum ? (nesterov ? g + momentum * b : b) : g;
    p = p + neg_lr * g;  // param.add_(grad, alpha=-lr)
  }
};

template <typename A>
struct AdamWUpdate {
  A decay, lerp_weight, beta2, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt;
  bool decay_on, maximize;

  explicit AdamWUpdate(const AdamHyper& h)
      : decay(static_cast<A>(1.0 - h.lr * h.weight_decay)),
        lerp_weight(static_cast<A>(1.0 - h.beta1)), beta2(static_cast<A>(h.beta2)),
        one_minus_beta2(static_cast<A>(1.0 - h.beta2)), eps(static_cast<A>(h.eps)),
        neg_step_size(static_cast<A>(
            -(h.lr / (1.0 - std::pow(h.beta1, static_cast<double>(h.step)))))),
        bias_correction2_sqrt(static_cast<A>(
            std::pow(1.0 - std::pow(h.beta2, static_cast<double>(h.step)), 0.5))),
        decay_on(h.weight_decay != 0.0), maximize(h.maximize) {}

  // p: the parameter, g: its gradient, m, v: exp_avg and exp_avg_sq (read and written).
  // Selects of computed values, like SgdUpdate.
  SL_HD void operator()(A& p, A g, A& m, A& v) const {
    g = maximize ? -g : g;
    p = decay_on ? p * decay : p;  // param.mul_(1 - lr * weight_decay)
    // exp_avg.lerp_(grad, 1 - beta1), with ATen's two-sided lerp formula
    const A d = g - m;
    m = (lerp_weight < A(0.5)) ? m + lerp_weight * d : g - d * (A(1) - lerp_weight);
    v = v * beta2 + one_minus_beta2 * g * g;  // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
    const A denom = std::sqrt(v) / bias_correction2_sqrt + eps;
    p = p + neg_step_size * m / denom;  // param.addcdiv_(exp_avg, denom, value=-step_size)
  }
};

// keep ? a : b. On the host a bit blend: written as a select of the value just loaded, GCC
// turns it back into a conditional store, which no loop vectoriser can take.
template <typename T>
SL_HD T pick(bool keep, T a, T b) {
#if defined(__CUDACC__)
  return keep ? a : b;
#else
  using U = std::conditional_t<sizeof(T) == 2, uint16_t,
                               std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  const U m = U(0) - U(keep);
  return std::bit_cast<T>(static_cast<U>((std::bit_cast<U>(a) & m) | (std::bit_cast<U>(b) & ~m)));
#endif
}

// Entry e of a parameter p, its gradient g and states s1, s2 (SGD: the momentum buffer, present
// when kState1, and nothing; AdamW: exp_avg and exp_avg_sq): read, updated in A, and stored
// where `keep`; elsewhere the values read are stored back, so that a branch-free (vectorisable)
// loop leaves pruned entries as they were. T: the CPU's c10 types or CUDA's __half/__nv_bfloat16.
template <bool kState1, typename T, typename A>
SL_HD void update_entry(const SgdUpdate<A>& u, T* p, const T* g, T* s1, T*, int64_t e,
                        bool keep) {
  const T p0 = p[e];
  A pv = static_cast<A>(p0);
  A bv = A(0);
  T b0{};
  if constexpr (kState1) {
    b0 = s1[e];  // read even on the first step (ignored there): no conditional load
    bv = static_cast<A>(b0);
  }
  u(pv, static_cast<A>(g[e]), bv);
  p[e] = pick(keep, static_cast<T>(pv), p0);
  if constexpr (kState1) s1[e] = pick(keep, static_cast<T>(bv), b0);
}

template <bool kState1, typename T, typename A>
SL_HD void update_entry(const AdamWUpdate<A>& u, T* p, const T* g, T* s1, T* s2, int64_t e,
                        bool keep) {
  const T p0 = p[e], m0 = s1[e], v0 = s2[e];
  A pv = static_cast<A>(p0), mv = static_cast<A>(m0), vv = static_cast<A>(v0);
  u(pv, static_cast<A>(g[e]), mv, vv);
  p[e] = pick(keep, static_cast<T>(pv), p0);
  s1[e] = pick(keep, static_cast<T>(mv), m0);
  s2[e] = pick(keep, static_cast<T>(vv), v0);
}

}  // namespace sparse_lottery::optim
