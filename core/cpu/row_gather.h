// The CPU row gather and scatter-add that both the token embedding and the MoE row movement run.
#pragma once

#include "core/tensor.h"

namespace moe::cpu {

// y (M, C) = x (N, C) [index (M)], x and y of one dtype (a row copy). An index outside [0, N) throws InvalidArgument naming `op` and
// its index argument `index_arg` ("embedding_forward: ids[1] = 5 is out of range ...").
void gather_rows_for(const char* op, const char* index_arg, Tensor& y, const Tensor& x, const Tensor& index);

// dx (N, C) float32 [index[m]] += dy (M, C) [m], dy float32 or bfloat16; range errors as gather_rows_for.
void scatter_add_rows_for(const char* op, const char* index_arg, Tensor& dx, const Tensor& dy, const Tensor& index);

}  // namespace moe::cpu
