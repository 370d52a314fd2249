// Accepted intervals of settings numbers (core/value_range.h).
#include "core/value_range.h"

#include <charconv>
#include <cmath>

#include "core/check.h"

namespace moe {

bool Range::contains(double v) const {
  return std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
}

std::string Range::text() const {
  const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  if (!has_lo && !has_hi) return "any finite value";
  if (!has_hi) return detail::concat(lo_open ? "> " : ">= ", format_number(lo));
  if (!has_lo) return detail::concat(hi_open ? "< " : "<= ", format_number(hi));
  return detail::concat(lo_open ? "(" : "[", format_number(lo), ", ", format_number(hi), hi_open ? ")" : "]");
}

namespace {
template <typename T>
std::string shortest(T v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, res.ptr);
}
}  // namespace

std::string format_number(double v) { return shortest(v); }
std::string format_number(float v) { return shortest(v); }
std::string format_number(int64_t v) { return shortest(v); }

template <typename T>
void require_in_range(const char* name, T value, const Range& range) {
  MOE_REQUIRE(range.contains(static_cast<double>(value)), name, " = ", format_number(value),
              " is out of range; accepted: ", range.text());
}
template void require_in_range<int64_t>(const char*, int64_t, const Range&);
template void require_in_range<double>(const char*, double, const Range&);
template void require_in_range<float>(const char*, float, const Range&);

}  // namespace moe
