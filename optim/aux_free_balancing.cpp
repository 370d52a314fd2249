// Auxiliary-loss-free balancing (optim/aux_free_balancing.h).
#include "optim/aux_free_balancing.h"

#include "core/check.h"
#include "core/optim_ops.h"

namespace moe {

void update_selection_bias(const std::vector<MoELayer*>& layers, const std::vector<std::vector<int64_t>>& routed,
                           Communicator& world, double rate) {
  if (layers.empty()) return;
  MOE_ASSERT(routed.size() == layers.size(), "one row of routed counts per layer");
  const int64_t E = layers[0]->config().num_experts;
  std::vector<int64_t> load;
  for (size_t l = 0; l < layers.size(); ++l) {
    MOE_ASSERT(layers[l]->config().num_experts == E && static_cast<int64_t>(routed[l].size()) == E,
               "all MoE layers have the same number of experts");
    load.insert(load.end(), routed[l].begin(), routed[l].end());
  }
  all_reduce(world, load.data(), static_cast<int64_t>(load.size()));
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto first = load.begin() + static_cast<std::ptrdiff_t>(l * E);
    selection_bias_update(layers[l]->selection_bias, std::vector<int64_t>(first, first + E), rate);
  }
}

}  // namespace moe
