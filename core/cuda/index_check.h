// Range check of int32 index tensors (ids, targets, row indices, slots) on the device, for the CUDA
// kernels that read them: run before the kernel, so a bad index never reaches memory.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace moe::cuda {

// Finds the first element of `index` outside [lo, hi) on the device and copies its position back
// (one synchronising copy); throws the CPU backend's InvalidArgument (core/index_error.h) for it.
void require_indices_in_range(const char* op, const char* arg, const Tensor& index, int64_t lo, int64_t hi,
                              const char* note = "");

// Throws the CPU backend's InvalidArgument unless 0 <= positions[n] <= n % seq_len for every token row
// n (the document positions of core/ops.h); checked on the device, one synchronising copy.
void require_document_positions(const char* op, const Tensor& positions, int64_t seq_len);

}  // namespace moe::cuda
