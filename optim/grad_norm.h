// The global gradient norm, with every parameter counted exactly once whatever the layout, and
// clipping by it.
#pragma once

#include "core/parameters.h"
#include "parallel/process_groups.h"

namespace moe {

// sqrt(sum of squares of all gradients of the model), identical on every rank. Call after
// sync_gradients, when replicas hold equal gradients: dense parameters are replicated on every
// rank, so each rank's own dense sum counts them once; each expert shard is held by exactly one
// rank of every expert-parallel group, so summing the expert sums over that group counts every
// expert once. groups == nullptr: one process. Collective over groups->expert_parallel.control.
double global_grad_norm(const ParameterRegistry& registry, const ProcessGroups* groups);

// Scales every gradient by max_norm / norm when norm > max_norm > 0; returns the scale used (1 if
// none). A non-finite norm is left to the caller (it skips the step).
double clip_gradients(ParameterRegistry& registry, double norm, double max_norm);

}  // namespace moe
