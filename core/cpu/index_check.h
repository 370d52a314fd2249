// Range check of int32 index tensors (ids, targets, row indices, slots) for the CPU kernels that read them.
#pragma once

#include <cstdint>

#include "core/index_error.h"
#include "core/tensor.h"

namespace moe::cpu {

// Throws InvalidArgument naming the op, the argument, the first bad position ("slot[1, 0]") and the
// accepted range [lo, hi), followed by `note` (e.g. " (-1 marks an ignored row)").
inline void require_indices_in_range(const char* op, const char* arg, const Tensor& index, int64_t lo,
                                     int64_t hi, const char* note = "") {
  const int32_t* p = index.i32();
  for (int64_t i = 0; i < index.numel(); ++i)
    if (p[i] < lo || p[i] >= hi) throw_index_out_of_range(op, arg, index.shape(), i, p[i], lo, hi, note);
}

}  // namespace moe::cpu
