// Row gather and scatter-add on the device with the index check, shared by the row movement ops
// (rows.cu) and the embedding (embedding.cu); `op` and `arg` name the caller in an index error.
#pragma once

#include "core/tensor.h"

namespace moe::cuda {

// y (M, C) = x (N, C) [index (M)], index in [0, N); x and y float32, or both bfloat16.
void gather_rows_of(const char* op, const char* arg, Tensor& y, const Tensor& x, const Tensor& index);
// dx (N, C) float32 [index[m]] += dy (M, C) [m] (float32 or bfloat16), index in [0, N).
void scatter_add_rows_of(const char* op, const char* arg, Tensor& dx, const Tensor& dy, const Tensor& index);

}  // namespace moe::cuda
