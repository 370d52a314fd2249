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

// Throws InvalidArgument unless 0 <= positions[n] <= n % seq_len for every token row n (the document
// positions of core/ops.h), naming the first bad entry and its range.
inline void require_document_positions(const char* op, const Tensor& positions, int64_t seq_len) {
  const int32_t* p = positions.i32();
  for (int64_t n = 0; n < positions.numel(); ++n)
    if (p[n] < 0 || p[n] > n % seq_len)
      throw_index_out_of_range(op, "positions", positions.shape(), n, p[n], 0, n % seq_len + 1, kDocumentPositionNote);
}

}  // namespace moe::cpu
