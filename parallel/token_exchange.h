// The expert-parallel token exchange: from a rank's dispatch plan, the row counts each rank sends
// to and receives from every rank of its expert-parallel group (one all-to-all of per-expert
// counts), and the regrouping of received rows from source-major to expert-major order so the
// local experts run as one grouped pass.
#pragma once

#include <cstdint>
#include <vector>

#include "core/moe/dispatch_plan.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace moe {

// Computed once per forward; the backward reuses it with the directions swapped.
struct ExchangePlan {
  std::vector<int64_t> send_rows;     // (ep) kept rows this rank sends to each group rank
  std::vector<int64_t> recv_rows;     // (ep) rows it receives from each group rank
  std::vector<int64_t> recv_counts;   // (ep * E_local) rows from source s for local expert e at [s * E_local + e]
  std::vector<int64_t> local_offset;  // (E_local + 1) segment starts of the expert-major buffer
  Tensor to_expert_major;             // (R) int32: source-major row of expert-major row m
  Tensor to_source_major;             // (R) int32: expert-major row of source-major row m

  int64_t received_rows() const { return local_offset.empty() ? 0 : local_offset.back(); }
};

// Collective over ep_group (size layout.ep, group rank layout.ep_rank): the counts all-to-all.
// plan.kept is indexed by global expert id; the rows of expert e go to group rank e / E_local.
ExchangePlan make_exchange_plan(const DispatchPlan& plan, const ExpertLayout& layout, Communicator& ep_group);

}  // namespace moe
