// The expert exchange over an expert-parallel group (core/moe/expert_exchange.h): kept rows travel
// from dispatch order straight into the owning ranks' expert order by one all-to-all of blocks, and
// come back the same way (parallel/token_exchange.h has the counts exchange and the blocks).
#pragma once

#include <memory>

#include "core/moe/expert_exchange.h"
#include "parallel/process_groups.h"

namespace moe {

// An exchange for one MoE layer of groups.layout.num_experts experts, this rank holding
// groups.layout's experts. With ep = 1 no row moves (every rank holds every expert), but the
// global load-balancing scope still sums over the world. Rows move in `stream` (the rows' device's).
// `groups` must outlive the exchange.
std::unique_ptr<ExpertExchange> make_all_to_all_exchange(const ProcessGroups& groups, const Stream& stream);

}  // namespace moe
