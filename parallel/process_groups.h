// Process groups for expert parallelism: which experts each rank holds, and the communicators of
// the world, the expert-parallel group (ranks exchanging tokens) and the expert-data-parallel group
// (ranks holding the same experts, averaging their gradients), each a control and a data one.
//
// Placement: with world size W and expert-parallel size ep (ep divides W, E divisible by ep),
// world rank r has expert-parallel rank r % ep and holds the E / ep experts with global ids
// [(r % ep) * E/ep, (r % ep + 1) * E/ep). Its expert-parallel group is the ep consecutive ranks
// [(r / ep) * ep, (r / ep + 1) * ep), ordered so that group rank == r % ep; its expert-data-parallel
// group is the W / ep ranks with the same r % ep. Dense parameters are data-parallel over all W.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

struct ExpertLayout {
  int world_size = 1;
  int world_rank = 0;
  int ep = 1;                      // expert-parallel size
  int ep_rank = 0;                 // rank within the expert-parallel group
  int edp_size = 1;                // expert-data-parallel size, W / ep
  int64_t num_experts = 1;         // E, global
  int64_t experts_per_rank = 1;    // E / ep
  int64_t first_expert = 0;        // global id of this rank's first expert

  int owner_ep_rank(int64_t expert) const { return static_cast<int>(expert / experts_per_rank); }
};

// Validates and computes the layout. Throws InvalidArgument naming the values when ep < 1, ep does
// not divide world_size, or num_experts is not divisible by ep. Pure: every rank computes the same
// verdict without communicating, so a bad layout fails everywhere before any collective starts.
ExpertLayout make_expert_layout(int world_size, int world_rank, int ep, int64_t num_experts);

// One group of ranks with two communicators over the same ranks, in the same rank order, so that
// host control traffic never interleaves with the collectives that move tensors:
//  - control: host values (token counts and exchange plans, flags, strings, losses and other
//    scalars, agreement on errors, checkpoint coordination); MPI;
//  - data: tensors in a Stream (gradients, token rows); MPI or NCCL (DataBackend).
struct ProcessGroup {
  Communicator* control = nullptr;  // not null once made
  Communicator* data = nullptr;     // not null once made; a different object from control
};

// What a group's data communicator is: MPI (host memory), or NCCL (the memory of each rank's GPU).
enum class DataBackend { MPI, NCCL };

struct ProcessGroups {
  ExpertLayout layout;
  ProcessGroup world;                 // all W ranks; world.control is the caller's world communicator
  ProcessGroup expert_parallel;       // size ep: the ranks exchanging tokens
  ProcessGroup expert_data_parallel;  // size W / ep: the ranks holding the same experts
  std::vector<std::unique_ptr<Communicator>> owned;  // every communicator above but the caller's world
};

// Collective over `world` (which must outlive the result and serves as the world's control
// communicator): validates the layout first, then splits the groups' communicators. Each data
// communicator is, for DataBackend::MPI, a split communicator of its own (staged through host memory,
// parallel/staged_communicator.h, when the tensors live on GPU `gpu` >= 0); for DataBackend::NCCL, an
// NCCL communicator over the group's control communicator on GPU `gpu` (make_nccl_communicator,
// whose checks and errors apply: InvalidArgument in a build without NCCL or without the GPU).
ProcessGroups make_process_groups(Communicator& world, int ep, int64_t num_experts,
                                  DataBackend backend = DataBackend::MPI, int gpu = -1);

}  // namespace moe
