// Where a rank sits on its machine: its index among the ranks of its node (local rank), how many
// ranks share the node, and the node's index in the job. A GPU build picks each rank's GPU from the
// local rank; launchers and logs use the rest.
//
// Sources, in order: OpenMPI's environment (OMPI_COMM_WORLD_LOCAL_RANK / _LOCAL_SIZE, set by
// mpirun), Slurm's (SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_TASKS_PER_NODE or SLURM_TASKS_PER_NODE,
// set by srun), then an MPI shared-memory split (MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)). An
// environment is trusted only when its rank and size variables (OMPI_COMM_WORLD_RANK / _SIZE,
// SLURM_PROCID / SLURM_NTASKS) match the MPI world: inside a Slurm batch job started with mpirun,
// the batch step's SLURM_LOCALID (0 on every rank) is thereby ignored.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "parallel/communicator.h"

namespace moe {

struct LocalPlacement {
  int local_rank = 0;  // index among the ranks on this node, 0-based
  int local_size = 1;  // ranks on this node
  int node = 0;        // index of this node among the job's nodes, 0-based; -1 = not known
  std::string source;  // where local_rank came from: an environment variable's name, or "MPI shared-memory split"
};

// Pure (reads nothing but `getenv`, which returns nullptr for an unset variable): the placement of
// world rank `world_rank` of `world_size` from OpenMPI's variables, else Slurm's; nullopt when neither
// is set, malformed or disagrees with world_rank / world_size. OpenMPI does not export the node
// index: node is -1 then.
std::optional<LocalPlacement> local_placement_from_environment(int world_rank, int world_size,
                                                               const std::function<const char*(const char*)>& getenv);

// Collective over `world` (call it on every rank at the same point): the environment as above (the
// process's own), with the node index and anything the environment lacks from an MPI shared-memory
// split when `world` is an MPI communicator. A single-process communicator gives {0, 1, 0}.
LocalPlacement local_placement(Communicator& world);

// The GPU a rank uses: its local rank, one GPU per rank (one NCCL communicator cannot hold two ranks
// on the same GPU). Returns -1 when gpu_count is 0 (no GPU: the CPU path). Throws InvalidArgument
// when local_rank >= gpu_count > 0, naming both (more ranks on the node than GPUs).
int gpu_for_local_rank(int local_rank, int gpu_count);

}  // namespace moe
