// The counts exchange and the (peer, expert) blocks of the row exchange.
#include "parallel/token_exchange.h"

#include "core/check.h"

namespace moe {

ExchangePlan make_exchange_plan(const DispatchPlan& plan, const ExpertLayout& layout, Communicator& ep_group) {
  const int ep = layout.ep;
  const int64_t E_local = layout.experts_per_rank;
  MOE_ASSERT(ep_group.size() == ep && ep_group.rank() == layout.ep_rank, "ep_group matches the layout");
  MOE_ASSERT(plan.num_experts == layout.num_experts, "plan covers all experts");

  ExchangePlan x;
  // plan.kept is already grouped by destination: block j holds the counts of group rank j's experts.
  // recv_counts[s * E_local + e]: rows from source s for local expert e.
  std::vector<int64_t> recv_counts(ep * E_local, 0);
  ep_group.all_to_all(plan.kept.data(), recv_counts.data(), E_local * static_cast<int64_t>(sizeof(int64_t)));

  x.dispatch_blocks = {E_local, std::vector<int64_t>(plan.offset.begin(), plan.offset.end() - 1), plan.kept};
  x.expert_blocks = {E_local, std::vector<int64_t>(ep * E_local), recv_counts};
  x.local_offset.assign(E_local + 1, 0);
  for (int64_t e = 0; e < E_local; ++e) {
    int64_t row = x.local_offset[e];
    for (int s = 0; s < ep; ++s) {
      x.expert_blocks.offset[s * E_local + e] = row;
      row += recv_counts[s * E_local + e];
    }
    x.local_offset[e + 1] = row;
  }
  return x;
}

}  // namespace moe
