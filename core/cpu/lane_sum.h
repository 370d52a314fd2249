// Sums and maxima in kLanes interleaved partial results, which the compiler keeps in one vector
// register: a single running sum or max is a chain of dependent scalar operations, several times slower
// over a row of hundreds. The partials combine in a fixed order, so a result does not depend on the
// thread or the call (only on n); the max is exact in any order.
#pragma once

#include <algorithm>
#include <cstdint>

namespace moe::cpu {

constexpr int64_t kLanes = 16;

// sum_{j < n} term(j) in Sum (float, or double for long sums), term(j) an expression of element j
// (inlined into the loop): element j goes to lane j % kLanes, the lanes are then added in order.
template <class Sum = float, class Term>
inline Sum lane_sum(int64_t n, Term term) {
  Sum lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(j + l);
  for (; j < n; ++j) lanes[j % kLanes] += term(j);
  Sum sum = 0;
  for (const Sum lane : lanes) sum += lane;
  return sum;
}

// max_{j < n} x[j], n >= 1 (a NaN element may or may not be the result, as with std::max in a loop).
inline float lane_max(const float* x, int64_t n) {
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, x[0]);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = lanes[l] < x[j + l] ? x[j + l] : lanes[l];
  for (; j < n; ++j) lanes[0] = std::max(lanes[0], x[j]);
  return *std::max_element(lanes, lanes + kLanes);
}

}  // namespace moe::cpu
