// Command-line argument checks shared by every binary (core/command_line.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <functional>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/command_line.h"

namespace moe {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(ParseIntegerArgument, AcceptsWholeNumbersInRange) {
  EXPECT_EQ(parse_integer_argument("--ep", "4", 1, INT_MAX), 4);
  EXPECT_EQ(parse_integer_argument("--from", "0", 0, 10), 0);
  EXPECT_EQ(parse_integer_argument("--x", "-3", -5, 5), -3);
  EXPECT_EQ(parse_integer_argument("--x", "9223372036854775807", 0, INT64_MAX), INT64_MAX);
}

TEST(ParseIntegerArgument, RefusesWhatAnIntCannotHoldInsteadOfCuttingIt) {
  // 4294967298 = 2^32 + 2: a cast to int would give 2.
  EXPECT_EQ(error_of([] { parse_integer_argument("--ep", "4294967298", 1, INT_MAX); }),
            "--ep 4294967298: out of range; expected an integer in [1, 2147483647]");
  EXPECT_EQ(error_of([] { parse_integer_argument("--count", "99999999999999999999", 1, INT64_MAX); }),
            "--count 99999999999999999999: too large; expected an integer >= 1");
  EXPECT_EQ(error_of([] { parse_integer_argument("--repeats", "0", 1, INT64_MAX); }),
            "--repeats 0: out of range; expected an integer >= 1");
}

TEST(ParseIntegerArgument, RefusesAnythingButAWholeInteger) {
  for (const char* text : {"", "two", "3x", "1.5", " 3", "3 ", "+3", "0x10"})
    EXPECT_EQ(error_of([&] { parse_integer_argument("--ep", text, 1, 8); }),
              std::string("--ep: expected an integer in [1, 8], got '") + text + "'")
        << text;
}

TEST(ParseNumberArgument, AcceptsFiniteNumbersInRange) {
  EXPECT_EQ(parse_number_argument("--min-usage", "0.25", 0, 1), 0.25);
  EXPECT_EQ(parse_number_argument("--capacity-factor", "-1", -HUGE_VAL, HUGE_VAL), -1.0);
  EXPECT_EQ(parse_number_argument("--mb", "1e3", 0, HUGE_VAL), 1000.0);
}

TEST(ParseNumberArgument, RefusesOutOfRangeAndNonFinite) {
  EXPECT_EQ(error_of([] { parse_number_argument("--min-usage", "1.5", 0, 1); }),
            "--min-usage 1.5: out of range; expected a finite number in [0, 1]");
  for (const char* text : {"", "nan", "inf", "1e999", "0.5x"})
    EXPECT_EQ(error_of([&] { parse_number_argument("--cf", text, -HUGE_VAL, HUGE_VAL); }),
              std::string("--cf: expected a finite number, got '") + text + "'")
        << text;
}

TEST(RequireOutputNotInput, RefusesTheSameFileHoweverItIsSpelled) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("moe_cli_test_" + std::to_string(::getpid()));
  fs::create_directories(dir / "sub");
  const std::string in = (dir / "in.txt").string();
  std::ofstream(in) << "text";
  fs::create_symlink(in, dir / "link.txt");
  fs::create_hard_link(in, dir / "hard.txt");
  for (const std::string& out : {in, (dir / "sub/../in.txt").string(), (dir / "link.txt").string(),
                                 (dir / "hard.txt").string()})
    EXPECT_EQ(error_of([&] { require_output_not_input(out, {"/nonexistent", in}); }),
              "the output '" + out + "' is the input '" + in + "' (the same file); write the output elsewhere")
        << out;
  // A new file, or another existing one, is not an input.
  EXPECT_EQ(error_of([&] { require_output_not_input((dir / "new.tok").string(), {in}); }), "");
  EXPECT_EQ(error_of([&] { require_output_not_input((dir / "sub").string(), {in}); }), "");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moe
