// The CPU row gather and scatter-add that both the token embedding and the MoE row movement run.
#pragma once

#include "core/tensor.h"

namespace moe::cpu {

// y (M, C) = x (N, C) [index (M)]. An index outside [0, N) throws InvalidArgument naming `op` and
// its index argument `index_arg` ("embedding_forward: ids[1] = 5 is out of range ...").
void gather_rows_for(const char* op, const char* index_arg, Tensor& y, const Tensor& x, const Tensor& index);

// dx (N, C) [index[m]] += dy (M, C) [m]; range errors as gather_rows_for.
void scatter_add_rows_for(const char* op, const char* index_arg, Tensor& dx, const Tensor& dy, const Tensor& index);

}  // namespace moe::cpu
