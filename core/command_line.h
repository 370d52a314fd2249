// Checking command-line arguments, for every binary alike: numbers read whole and against their
// accepted range (never silently cut to a narrower type), and output paths that must not be inputs.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// The whole of `text` as a base-10 integer in [min, max]. InvalidArgument otherwise, naming `what`
// (the option, e.g. "--ep"), the text and the accepted range: "4294967298" for an option read into
// an int (max INT_MAX) is refused, not taken as 2.
int64_t parse_integer_argument(const std::string& what, const std::string& text, int64_t min, int64_t max);

// The whole of `text` as a finite number in [min, max]; InvalidArgument naming `what`, the text and
// the range otherwise; -HUGE_VAL and HUGE_VAL leave a side unbounded.
double parse_number_argument(const std::string& what, const std::string& text, double min, double max);

// InvalidArgument naming both when `output` is the same file as one of `inputs`: the same inode
// (std::filesystem::equivalent), however it is spelled (a relative path, a symbolic or hard link).
// An output that does not exist yet is none of them.
void require_output_not_input(const std::string& output, const std::vector<std::string>& inputs);

}  // namespace moe
