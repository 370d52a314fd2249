// The expert-parallel token exchange plan: from a rank's dispatch plan, one all-to-all of per-expert
// counts, and where each (peer, expert) block of rows sits on both sides of the row exchange, so rows
// travel from dispatch order straight into the local experts' order (and back) with no regrouping.
#pragma once

#include <cstdint>
#include <vector>

#include "core/moe/dispatch_plan.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace moe {

// Computed once per forward; the backward reuses it with the directions swapped. Both layouts have
// E_local blocks per group rank, block e being local expert e of the rank that owns the experts.
struct ExchangePlan {
  // Rows in dispatch order (the dispatch plan's permuted rows, M): peer j's block e is the segment of
  // global expert j * E_local + e.
  RowBlocks dispatch_blocks;
  // Rows in expert order (R): rows from source s for local expert e start at local_offset[e] plus
  // the rows for e from the sources before s.
  RowBlocks expert_blocks;
  std::vector<int64_t> local_offset;  // (E_local + 1) segment starts of the expert-order buffer

  int64_t received_rows() const { return local_offset.empty() ? 0 : local_offset.back(); }
};

// Collective over ep_group (size layout.ep, group rank layout.ep_rank): the counts all-to-all.
// plan.kept is indexed by global expert id; the rows of expert e go to group rank e / E_local.
ExchangePlan make_exchange_plan(const DispatchPlan& plan, const ExpertLayout& layout, Communicator& ep_group);

}  // namespace moe
