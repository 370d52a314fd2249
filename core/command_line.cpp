// Checking command-line arguments (core/command_line.h).
#include "core/command_line.h"

#include <charconv>
#include <cmath>
#include <filesystem>

#include "core/check.h"

namespace moe {

namespace {

// " in [1, 8]", " >= 1" or " <= 8" (a bound at the type's limit is no bound a user chose), or "".
template <typename T>
std::string range_text(T min, T max, T lowest, T largest) {
  if (min == lowest) return max == largest ? "" : detail::concat(" <= ", max);
  return max == largest ? detail::concat(" >= ", min) : detail::concat(" in [", min, ", ", max, "]");
}

}  // namespace

int64_t parse_integer_argument(const std::string& what, const std::string& text, int64_t min, int64_t max) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  const std::string accepted = "an integer" + range_text<int64_t>(min, max, INT64_MIN, INT64_MAX);
  MOE_REQUIRE(ec != std::errc::result_out_of_range, what, " ", text, ": too large; expected ", accepted);
  MOE_REQUIRE(!text.empty() && ec == std::errc() && ptr == end, what, ": expected ", accepted, ", got '", text, "'");
  MOE_REQUIRE(v >= min && v <= max, what, " ", text, ": out of range; expected ", accepted);
  return v;
}

double parse_number_argument(const std::string& what, const std::string& text, double min, double max) {
  double v = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  const std::string accepted = "a finite number" + range_text<double>(min, max, -HUGE_VAL, HUGE_VAL);
  MOE_REQUIRE(!text.empty() && ec == std::errc() && ptr == end && std::isfinite(v), what, ": expected ", accepted,
              ", got '", text, "'");
  MOE_REQUIRE(v >= min && v <= max, what, " ", text, ": out of range; expected ", accepted);
  return v;
}

void require_output_not_input(const std::string& output, const std::vector<std::string>& inputs) {
  for (const std::string& input : inputs) {
    std::error_code ec;  // a path that does not exist (or cannot be examined) is not the same file
    MOE_REQUIRE(!std::filesystem::equivalent(output, input, ec) || ec, "the output '", output,
                "' is the input '", input, "' (the same file); write the output elsewhere");
  }
}

}  // namespace moe
