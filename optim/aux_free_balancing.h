// Auxiliary-loss-free load balancing (DeepSeek-V3): a per-expert bias added to the router's scores
// when choosing the top-k (never to the combine weights), nudged after every step toward equal load.
#pragma once

#include <vector>

#include "core/moe/moe_layer.h"
#include "parallel/communicator.h"

namespace moe {

// routed[l][e]: this rank's (token, choice) pairs that picked expert e of layers[l] since the last
// update, before dropping (the sum of MoEStats::routed over the step's micro-batches). Sums them
// over all ranks of `world`, then moves each expert's selection_bias by `rate` toward the mean load: +rate when the expert
// took fewer tokens than the mean, -rate when more, 0 when equal. Every rank sees the same summed
// loads, so the biases stay identical on all ranks without further communication. Collective over
// world (one all-reduce for all layers). Layers must share num_experts.
void update_selection_bias(const std::vector<MoELayer*>& layers, const std::vector<std::vector<int64_t>>& routed,
                           Communicator& world, double rate);

}  // namespace moe
