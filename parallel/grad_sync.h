// Gradient synchronisation for expert-parallel data-parallel training.
#pragma once

#include "core/parameters.h"
#include "parallel/process_groups.h"

namespace moe {

// Makes every rank's gradients equal the gradient of the training objective
// J = (1 / (W A)) * sum over ranks r and micro-batches a of L_ra (each rank's loss on each of its
// A = micro_batches micro-batches, whose gradients the rank has summed):
//  - dense parameters: summed over all W ranks, divided by W A;
//  - expert parameters: summed over the expert-data-parallel group (the W / ep ranks holding the
//    same experts; each already holds the contributions of all ep ranks of its expert-parallel
//    group, which sent it their tokens), divided by W A (not by the group size).
// One all-reduce per parameter kind, of the registry's flat gradient buffer as it is (the registry
// must be flattened), in `stream` (the gradients' device's). Collective over the data
// communicators of groups.world and groups.expert_data_parallel.
void sync_gradients(ParameterRegistry& registry, const ProcessGroups& groups, const Stream& stream,
                    int64_t micro_batches = 1);

}  // namespace moe
