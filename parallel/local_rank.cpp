// Local rank, local size and node index of a rank (parallel/local_rank.h).
#include "parallel/local_rank.h"

#include <mpi.h>

#include <charconv>
#include <cstdlib>
#include <vector>

#include "core/check.h"
#include "parallel/mpi/mpi_communicator.h"

namespace moe {
namespace {

// The variable's value as an int >= 0, or nullopt when unset or not such an int.
std::optional<int> env_int(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* v = getenv(name);
  if (v == nullptr) return std::nullopt;
  const std::string text(v);
  int out = -1;
  const char* end = text.data() + text.size();
  auto res = std::from_chars(text.data(), end, out);
  if (text.empty() || res.ec != std::errc() || res.ptr != end || out < 0) return std::nullopt;
  return out;
}

// Slurm's tasks-per-node list ("2(x3),1": 2 tasks on each of the first 3 nodes, then 1) expanded to
// one count per node; empty when malformed.
std::vector<int> expand_tasks_per_node(const std::string& text) {
  std::vector<int> counts;
  size_t at = 0;
  while (at < text.size()) {
    size_t comma = text.find(',', at);
    if (comma == std::string::npos) comma = text.size();
    const std::string entry = text.substr(at, comma - at);
    int count = 0, repeat = 1;
    const size_t paren = entry.find("(x");
    const std::string count_text = entry.substr(0, paren);
    auto res = std::from_chars(count_text.data(), count_text.data() + count_text.size(), count);
    if (count_text.empty() || res.ec != std::errc() || res.ptr != count_text.data() + count_text.size() || count < 1)
      return {};
    if (paren != std::string::npos) {
      if (entry.back() != ')') return {};
      const std::string rep = entry.substr(paren + 2, entry.size() - paren - 3);
      auto r = std::from_chars(rep.data(), rep.data() + rep.size(), repeat);
      if (rep.empty() || r.ec != std::errc() || r.ptr != rep.data() + rep.size() || repeat < 1) return {};
    }
    counts.insert(counts.end(), repeat, count);
    at = comma + 1;
  }
  return counts;
}

}  // namespace

std::optional<LocalPlacement> local_placement_from_environment(int world_rank, int world_size,
                                                               const std::function<const char*(const char*)>& getenv) {
  {
    auto rank = env_int(getenv, "OMPI_COMM_WORLD_RANK"), size = env_int(getenv, "OMPI_COMM_WORLD_SIZE");
    auto local = env_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK"),
         local_size = env_int(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE");
    if (rank == world_rank && size == world_size && local && local_size && *local < *local_size)
      return LocalPlacement{*local, *local_size, -1, "OMPI_COMM_WORLD_LOCAL_RANK"};
  }
  auto rank = env_int(getenv, "SLURM_PROCID"), size = env_int(getenv, "SLURM_NTASKS");
  auto local = env_int(getenv, "SLURM_LOCALID"), node = env_int(getenv, "SLURM_NODEID");
  const char* per_node = getenv("SLURM_STEP_TASKS_PER_NODE");
  if (per_node == nullptr) per_node = getenv("SLURM_TASKS_PER_NODE");
  if (rank != world_rank || size != world_size || !local || !node || per_node == nullptr) return std::nullopt;
  const std::vector<int> counts = expand_tasks_per_node(per_node);
  if (*node >= static_cast<int>(counts.size()) || *local >= counts[*node]) return std::nullopt;
  return LocalPlacement{*local, counts[*node], *node, "SLURM_LOCALID"};
}

LocalPlacement local_placement(Communicator& world) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&world);
  std::optional<LocalPlacement> from_env =
      local_placement_from_environment(world.rank(), world.size(), [](const char* name) { return std::getenv(name); });
  if (mpi == nullptr) {
    if (world.size() == 1) return LocalPlacement{0, 1, 0, "single process"};
    MOE_ASSERT(from_env.has_value(), "a multi-rank communicator that is not MPI has no placement source");
    return *from_env;
  }
  // The shared-memory split: ranks that share memory are on one node. The node index is the rank of
  // the node's first rank among all nodes' first ranks, broadcast over the node.
  MPI_Comm node_comm = MPI_COMM_NULL, leaders = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split_type(mpi->handle(), MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node_comm));
  LocalPlacement split;
  MPI_CHECK(MPI_Comm_rank(node_comm, &split.local_rank));
  MPI_CHECK(MPI_Comm_size(node_comm, &split.local_size));
  MPI_CHECK(MPI_Comm_split(mpi->handle(), split.local_rank == 0 ? 0 : MPI_UNDEFINED, world.rank(), &leaders));
  if (leaders != MPI_COMM_NULL) {
    MPI_CHECK(MPI_Comm_rank(leaders, &split.node));
    MPI_CHECK(MPI_Comm_free(&leaders));
  }
  MPI_CHECK(MPI_Bcast(&split.node, 1, MPI_INT, 0, node_comm));
  MPI_CHECK(MPI_Comm_free(&node_comm));
  split.source = "MPI shared-memory split";
  if (!from_env) return split;
  if (from_env->node < 0) from_env->node = split.node;
  return *from_env;
}

int gpu_for_local_rank(int local_rank, int gpu_count) {
  MOE_ASSERT(local_rank >= 0 && gpu_count >= 0, "a local rank and a GPU count are never negative");
  if (gpu_count == 0) return -1;
  MOE_REQUIRE(local_rank < gpu_count, "local rank ", local_rank, " has no GPU of its own: this node has ", gpu_count,
              " GPU(s), one per rank is needed (lower launch.ranks_per_node or scheduler.tasks_per_node to at most ",
              gpu_count, ")");
  return local_rank;
}

}  // namespace moe
