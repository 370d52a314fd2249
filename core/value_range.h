// The accepted interval of a number in a settings struct (MoEConfig, ModelConfig, the optimizers'),
// declared once next to the field: the struct's validate() checks it, and the run configuration's
// schema (launch/config) checks it per key and quotes it in `moe-train --help` and its messages.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

namespace moe {

// A bound is inclusive unless marked open. Non-finite values are never accepted.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  bool lo_open = false;
  double hi = std::numeric_limits<double>::infinity();
  bool hi_open = false;

  bool contains(double v) const;
  std::string text() const;  // ">= 1", "> 0", "[0, 1)", "any finite value"
};

constexpr Range at_least(double lo) { return {lo, false, std::numeric_limits<double>::infinity(), false}; }
constexpr Range above(double lo) { return {lo, true, std::numeric_limits<double>::infinity(), false}; }
constexpr Range closed(double lo, double hi) { return {lo, false, hi, false}; }
constexpr Range closed_open(double lo, double hi) { return {lo, false, hi, true}; }
constexpr Range open_closed(double lo, double hi) { return {lo, true, hi, false}; }
constexpr Range any_finite() { return {}; }

// The shortest text that reads back to exactly `v` ("0.003", "1e-08", "300"; a float as a float:
// 0.1f is "0.1").
std::string format_number(double v);
std::string format_number(float v);
std::string format_number(int64_t v);

// Throws InvalidArgument "<name> = <value> is out of range; accepted: <range>" unless range holds value.
template <typename T>
void require_in_range(const char* name, T value, const Range& range);

}  // namespace moe
