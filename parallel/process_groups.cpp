// Expert placement and the communicators of the world, expert-parallel and expert-data-parallel groups.
#include "parallel/process_groups.h"

#include "core/check.h"
#include "parallel/nccl/nccl_communicator.h"
#include "parallel/staged_communicator.h"

namespace moe {

ExpertLayout make_expert_layout(int world_size, int world_rank, int ep, int64_t num_experts) {
  MOE_REQUIRE(world_size >= 1 && world_rank >= 0 && world_rank < world_size, "world rank ", world_rank,
              " must be in [0, world size = ", world_size, ")");
  MOE_REQUIRE(ep >= 1, "expert-parallel size ep = ", ep, " must be >= 1");
  MOE_REQUIRE(world_size % ep == 0, "expert-parallel size ep = ", ep,
              " must divide the number of ranks (world size = ", world_size, ")");
  MOE_REQUIRE(num_experts >= 1 && num_experts % ep == 0, "num_experts = ", num_experts,
              " must be a positive multiple of the expert-parallel size ep = ", ep);
  ExpertLayout l;
  l.world_size = world_size;
  l.world_rank = world_rank;
  l.ep = ep;
  l.ep_rank = world_rank % ep;
  l.edp_size = world_size / ep;
  l.num_experts = num_experts;
  l.experts_per_rank = num_experts / ep;
  l.first_expert = l.ep_rank * l.experts_per_rank;
  return l;
}

namespace {
// control's group: control itself and a data communicator of its own over every rank of control, in
// control's order (owned by `owned`).
ProcessGroup with_data(Communicator& control, DataBackend backend, int gpu,
                       std::vector<std::unique_ptr<Communicator>>& owned) {
  if (backend == DataBackend::NCCL)
    owned.push_back(make_nccl_communicator(control, gpu));
  else if (gpu >= 0)
    owned.push_back(make_staged_communicator(control.split(/*color=*/0, /*key=*/control.rank())));
  else
    owned.push_back(control.split(/*color=*/0, /*key=*/control.rank()));
  return ProcessGroup{&control, owned.back().get()};
}
}  // namespace

ProcessGroups make_process_groups(Communicator& world, int ep, int64_t num_experts, DataBackend backend, int gpu) {
  ProcessGroups g;
  g.layout = make_expert_layout(world.size(), world.rank(), ep, num_experts);
  g.world = with_data(world, backend, gpu, g.owned);
  g.owned.push_back(world.split(/*color=*/world.rank() / ep, /*key=*/g.layout.ep_rank));
  g.expert_parallel = with_data(*g.owned.back(), backend, gpu, g.owned);
  g.owned.push_back(world.split(/*color=*/g.layout.ep_rank, /*key=*/world.rank() / ep));
  g.expert_data_parallel = with_data(*g.owned.back(), backend, gpu, g.owned);
  for (const ProcessGroup* group : {&g.world, &g.expert_parallel, &g.expert_data_parallel})
    MOE_ASSERT(group->data->size() == group->control->size() && group->data->rank() == group->control->rank(),
               "a group's data communicator has its control communicator's ranks, in its order");
  MOE_ASSERT(g.expert_parallel.control->size() == ep && g.expert_parallel.control->rank() == g.layout.ep_rank,
             "expert-parallel group rank equals the expert-parallel rank");
  MOE_ASSERT(g.expert_data_parallel.control->size() == g.layout.edp_size, "expert-data-parallel group has W/ep ranks");
  return g;
}

}  // namespace moe
