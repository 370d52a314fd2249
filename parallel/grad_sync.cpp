// Gradient synchronisation over the world and expert-data-parallel groups (parallel/grad_sync.h).
#include "parallel/grad_sync.h"

#include "core/check.h"
#include "core/optim_ops.h"

namespace moe {

void sync_gradients(ParameterRegistry& registry, const ProcessGroups& groups, const Stream& stream,
                    int64_t micro_batches) {
  MOE_REQUIRE(registry.flattened(), "sync_gradients: the registry's gradients are not flattened; call "
              "flatten_gradients after registering the parameters");
  // The scale is rounded to float first: x * double(float s) rounded to float is the float product
  // x * s, what this sync has always computed.
  const float scale = 1.0f / static_cast<float>(groups.layout.world_size * micro_batches);
  const std::pair<ParamKind, Communicator*> kinds[] = {{ParamKind::Dense, groups.world.data},
                                                       {ParamKind::Expert, groups.expert_data_parallel.data}};
  for (const auto& [kind, comm] : kinds) {
    Tensor& flat = registry.gradients(kind);
    if (flat.numel() == 0) continue;  // the same on every rank of the group
    // A group of one and a scale of 1 leave the gradients as they are: skipped, not run as copies.
    if (comm->size() > 1) all_reduce(*comm, flat, stream);
    if (scale != 1.f) scale_in_place(flat, scale);
  }
}

}  // namespace moe
