// The error of an index value (id, target, row index, slot) out of range, one message for every
// backend's index check (core/cpu/index_check.h, core/cuda/index_check.h).
#pragma once

#include <cstdint>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "core/tensor.h"

namespace moe {

// Throws InvalidArgument naming the op, the argument, the bad element's position in `shape`
// ("slot[1, 0]") given its row-major flat `position`, its value and the accepted range [lo, hi),
// followed by `note` (e.g. " (-1 marks an ignored row)").
[[noreturn]] inline void throw_index_out_of_range(const char* op, const char* arg, const Shape& shape,
                                                  int64_t position, int32_t value, int64_t lo, int64_t hi,
                                                  const char* note) {
  std::vector<int64_t> coords(shape.size());  // row-major multi-index of the flat position
  int64_t rest = position;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    coords[d] = rest % shape[d];
    rest /= shape[d];
  }
  std::ostringstream where;
  for (size_t d = 0; d < coords.size(); ++d) where << (d ? ", " : "") << coords[d];
  throw InvalidArgument(detail::concat(op, ": ", arg, "[", where.str(), "] = ", value, " is out of range, expected [",
                                       lo, ", ", hi, ")", note));
}

// The note of a document position (core/ops.h's `positions`) out of its range [0, s] (s: the token's
// position in its sequence), for both backends' checks.
inline constexpr const char* kDocumentPositionNote =
    " (a token's position in its document is at most its position in the sequence)";

}  // namespace moe
