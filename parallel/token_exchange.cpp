// Counts exchange, row exchange and the source-major / expert-major regrouping indices.
#include "parallel/token_exchange.h"

#include <numeric>

#include "core/check.h"

namespace moe {

ExchangePlan make_exchange_plan(const DispatchPlan& plan, const ExpertLayout& layout, Communicator& ep_group) {
  const int ep = layout.ep;
  const int64_t E_local = layout.experts_per_rank;
  MOE_ASSERT(ep_group.size() == ep && ep_group.rank() == layout.ep_rank, "ep_group matches the layout");
  MOE_ASSERT(plan.num_experts == layout.num_experts, "plan covers all experts");

  ExchangePlan x;
  // plan.kept is already grouped by destination: block j holds the counts of group rank j's experts.
  x.recv_counts.assign(ep * E_local, 0);
  ep_group.all_to_all(plan.kept.data(), x.recv_counts.data(), E_local * static_cast<int64_t>(sizeof(int64_t)));

  x.send_rows.assign(ep, 0);
  x.recv_rows.assign(ep, 0);
  for (int j = 0; j < ep; ++j)
    for (int64_t e = 0; e < E_local; ++e) {
      x.send_rows[j] += plan.kept[j * E_local + e];
      x.recv_rows[j] += x.recv_counts[j * E_local + e];
    }

  x.local_offset.assign(E_local + 1, 0);
  for (int64_t e = 0; e < E_local; ++e) {
    int64_t n = 0;
    for (int s = 0; s < ep; ++s) n += x.recv_counts[s * E_local + e];
    x.local_offset[e + 1] = x.local_offset[e] + n;
  }
  const int64_t R = x.local_offset[E_local];

  // start[s * E_local + e]: first source-major row of the block from source s for local expert e.
  std::vector<int64_t> start(ep * E_local, 0);
  std::exclusive_scan(x.recv_counts.begin(), x.recv_counts.end(), start.begin(), int64_t{0});
  x.to_expert_major = Tensor::empty({R}, DType::I32);
  x.to_source_major = Tensor::empty({R}, DType::I32);
  int32_t* to_expert = x.to_expert_major.i32();
  int32_t* to_source = x.to_source_major.i32();
  int64_t m = 0;
  for (int64_t e = 0; e < E_local; ++e)
    for (int s = 0; s < ep; ++s)
      for (int64_t i = 0; i < x.recv_counts[s * E_local + e]; ++i, ++m) {
        const int64_t src_row = start[s * E_local + e] + i;
        to_expert[m] = static_cast<int32_t>(src_row);
        to_source[src_row] = static_cast<int32_t>(m);
      }
  return x;
}

}  // namespace moe
