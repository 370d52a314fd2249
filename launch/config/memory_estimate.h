// How much memory a run needs on each rank, estimated from its config before anything is allocated,
// so that a model that cannot fit (moe.num_experts: 1048576 on a workstation) is refused with the
// estimate in the message instead of ending in std::bad_alloc on every rank.
#pragma once

#include <string>

#include "core/available_memory.h"
#include "launch/config/train_config.h"
#include "parallel/communicator.h"

namespace moe {

// Bytes, as doubles: a hostile config must not overflow the arithmetic that is to refuse it.
struct MemoryEstimate {
  double parameters = 0;   // this rank's parameters (its shard of the experts), their gradients and
                           // the optimizer's state; the routing biases and counters (per expert)
  double activations = 0;  // one micro-batch: what the forward keeps for the backward (attention
                           // probabilities, router logits and probabilities, expert buffers, logits)
                           // and the backward's scratch
  double total() const { return parameters + activations; }
};

// The memory one rank of a `world_size`-rank run of cfg allocates for its model, optimizer and one
// training step (cfg valid for that world size). Not counted: the libraries' own memory (MPI, the
// GEMM provider) and the data set (the synthetic corpus or a mapped token file). Within 5% of what
// the trainer allocates for the configs of tests/test_memory_estimate.cpp (one rank; with ep > 1 the
// rows the exchange moves are counted for a balanced routing).
MemoryEstimate estimate_memory_per_rank(const TrainConfig& cfg, int world_size);

// Collective over `world`: the memory one rank may use, the least over the ranks of the job, each
// node's available_memory() divided among its ranks (local_placement). Every rank gets the same
// figure, so a check against it ends every rank alike (no rank left waiting in a collective).
AvailableMemory available_memory_per_rank(Communicator& world);

// InvalidArgument unless the estimate fits in `per_rank` (available_memory_per_rank): the message
// gives the estimate (parameters, activations) and the available memory with its source, and names
// the keys that size the model. Pure.
void require_fits_in_memory(const TrainConfig& cfg, int world_size, const AvailableMemory& per_rank);

}  // namespace moe
