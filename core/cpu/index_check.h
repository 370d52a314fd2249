// Range check of int32 index tensors (ids, targets, row indices, slots) for the CPU kernels that read them.
#pragma once

#include <cstdint>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "core/tensor.h"

namespace moe::cpu {

// Throws InvalidArgument naming the op, the argument, the first bad position ("slot[1, 0]") and the
// accepted range [lo, hi), followed by `note` (e.g. " (-1 marks an ignored row)").
inline void require_indices_in_range(const char* op, const char* arg, const Tensor& index, int64_t lo,
                                     int64_t hi, const char* note = "") {
  const int32_t* p = index.i32();
  for (int64_t i = 0; i < index.numel(); ++i) {
    if (p[i] >= lo && p[i] < hi) continue;
    std::vector<int64_t> coords(index.rank());  // row-major multi-index of flat position i
    int64_t rest = i;
    for (int d = index.rank() - 1; d >= 0; --d) {
      coords[d] = rest % index.dim(d);
      rest /= index.dim(d);
    }
    std::ostringstream position;
    for (size_t d = 0; d < coords.size(); ++d) position << (d ? ", " : "") << coords[d];
    throw InvalidArgument(detail::concat(op, ": ", arg, "[", position.str(), "] = ", p[i],
                                         " is out of range, expected [", lo, ", ", hi, ")", note));
  }
}

}  // namespace moe::cpu
