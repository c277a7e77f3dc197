// Argument checks and the removal count of the selection ops (magnitude_prune, random_prune),
// for every C++ implementation. They mirror check_magnitude_prune / check_random_prune of
// sparse_lottery/_mask_format.py and the k computation of sparse_lottery/reference.py, with the
// same messages and Python exception types (TORCH_CHECK_TYPE -> TypeError, TORCH_CHECK_VALUE ->
// ValueError, TORCH_CHECK -> RuntimeError).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "mask_format.h"

namespace sparse_lottery {
namespace selection {

// Python's repr() of a float ("2.0", "0.1", "1e-05", "1e+16", "nan", "-inf"), so that amounts in
// C++ messages read as in Python's.
inline std::string python_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  for (int digits = 1; digits <= 17; ++digits) {  // the shortest form that reads back as v
    std::snprintf(buf, sizeof(buf), "%.*e", digits - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s(buf);  // [-]d[.ddd]e(+|-)XX
  const bool negative = s[0] == '-';
  if (negative) s.erase(0, 1);
  const size_t e = s.find('e');
  const int exponent = std::atoi(s.c_str() + e + 1);
  std::string mantissa;
  for (size_t i = 0; i < e; ++i) {
    if (s[i] != '.') mantissa += s[i];
  }
  while (mantissa.size() > 1 && mantissa.back() == '0') mantissa.pop_back();
  std::string out;
  if (exponent >= -4 && exponent < 16) {  // positional, with at least one fractional digit
    if (exponent < 0) {
      out = "0." + std::string(-exponent - 1, '0') + mantissa;
    } else {
      std::string whole = mantissa.substr(0, std::min<size_t>(mantissa.size(), exponent + 1));
      whole += std::string(exponent + 1 - whole.size(), '0');
      const std::string frac = mantissa.size() > size_t(exponent + 1)
                                   ? mantissa.substr(exponent + 1)
                                   : std::string("0");
      out = whole + "." + frac;
    }
  } else {
    out = mantissa.substr(0, 1);
    if (mantissa.size() > 1) out += "." + mantissa.substr(1);
    char ex[8];
    std::snprintf(ex, sizeof(ex), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += ex;
  }
  return negative ? "-" + out : out;
}

// One amount for the global scope, one per tensor for layerwise; fractions in [0, 1] or whole
// counts >= 0.
inline void check_amounts(at::ArrayRef<double> amounts, bool counts, bool layerwise,
                          int64_t tensors) {
  const int64_t expected = layerwise ? tensors : 1;
  TORCH_CHECK_VALUE(static_cast<int64_t>(amounts.size()) == expected, "amounts: expected ",
                    expected, " amount(s) (",
                    layerwise ? "one per tensor, layerwise scope" : "global scope", "), got ",
                    amounts.size());
  for (size_t i = 0; i < amounts.size(); ++i) {
    const double a = amounts[i];
    if (counts) {
      TORCH_CHECK_VALUE(std::isfinite(a) && a >= 0 && a == std::floor(a), "amounts[", i,
                        "]: expected a whole count ≥ 0, got ", python_float(a));
    } else {
      TORCH_CHECK_VALUE(a >= 0.0 && a <= 1.0, "amounts[", i,
                        "]: expected a fraction in [0, 1], got ", python_float(a));
    }
  }
}

inline void check_magnitude_prune(at::TensorList weights,
                                  const c10::List<std::optional<at::Tensor>>& masks,
                                  at::ArrayRef<double> amounts, bool counts, bool layerwise) {
  TORCH_CHECK_VALUE(masks.size() == weights.size(), "masks: expected ", weights.size(),
                    " masks (one per weight, or None), got ", masks.size());
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    const std::string wn = "weights[" + std::to_string(i) + "]";
    const at::ScalarType t = w.scalar_type();
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, wn,
                     ": expected dtype torch.float32, torch.bfloat16 or torch.float16, got ",
                     dtype_name(t));
    check_same_device(weights[0], "weights[0]", w, wn.c_str());
    const std::optional<at::Tensor> m = masks.get(i);
    if (m.has_value() && m->defined()) {
      const std::string mn = "masks[" + std::to_string(i) + "]";
      check_same_device(w, wn.c_str(), *m, mn.c_str());
      TORCH_CHECK_TYPE(m->scalar_type() == at::kBool || m->scalar_type() == at::kByte, mn,
                       ": expected dtype torch.bool (one flag per weight) or torch.uint8 (packed "
                       "by sparse_lottery.pack_mask), got ", dtype_name(m->scalar_type()));
      check_mask(*m, w.sizes(), mn.c_str(), wn.c_str());
    }
  }
  check_amounts(amounts, counts, layerwise, static_cast<int64_t>(weights.size()));
}

inline void check_random_prune(at::TensorList masks, at::ArrayRef<double> amounts, bool counts,
                               bool layerwise) {
  for (size_t i = 0; i < masks.size(); ++i) {
    const at::Tensor& m = masks[i];
    const std::string mn = "masks[" + std::to_string(i) + "]";
    check_same_device(masks[0], "masks[0]", m, mn.c_str());
    TORCH_CHECK_TYPE(m.scalar_type() == at::kBool || (m.scalar_type() == at::kByte && m.dim() == 2),
                     mn, ": expected a bool mask or a packed 2-D torch.uint8 mask, got ", m.dim(),
                     "-D ", dtype_name(m.scalar_type()));
  }
  check_amounts(amounts, counts, layerwise, static_cast<int64_t>(masks.size()));
}

// k of a group with `survivors` surviving weights: the count, or round-half-even(amount ·
// survivors) in double (Python's round(amount * n)); an error when k > survivors. `group` names
// the tensor for the layerwise scope.
inline int64_t removal_count(double amount, bool counts, int64_t survivors, bool layerwise,
                             int64_t group) {
  const std::string where =
      layerwise ? "tensor " + std::to_string(group) : std::string("the pool");
  if (counts) {
    if (amount > static_cast<double>(survivors)) {  // amount is a whole number (check_amounts)
      char k[400];
      std::snprintf(k, sizeof(k), "%.0f", amount);  // Python's int(amount), exactly
      TORCH_CHECK_VALUE(false, "amounts: ", k, " to remove exceeds the ", survivors,
                        " surviving weights of ", where);
    }
    return static_cast<int64_t>(amount);
  }
  const auto k = static_cast<int64_t>(std::nearbyint(amount * static_cast<double>(survivors)));
  TORCH_CHECK_VALUE(k <= survivors, "amounts: ", k, " to remove exceeds the ", survivors,
                    " surviving weights of ", where);
  return k;
}

}  // namespace selection
}  // namespace sparse_lottery
