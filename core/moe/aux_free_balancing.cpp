// Auxiliary-loss-free balancing (core/moe/aux_free_balancing.h).
#include "core/moe/aux_free_balancing.h"

#include "core/check.h"

namespace moe {

void update_selection_bias(const std::vector<MoELayer*>& layers, Communicator& world, double rate) {
  if (layers.empty()) return;
  const int64_t E = layers[0]->config().num_experts;
  std::vector<int64_t> load;
  for (MoELayer* layer : layers) {
    MOE_ASSERT(layer->config().num_experts == E, "all MoE layers have the same number of experts");
    load.insert(load.end(), layer->stats().routed.begin(), layer->stats().routed.end());
  }
  all_reduce(world, load.data(), static_cast<int64_t>(load.size()));
  for (size_t l = 0; l < layers.size(); ++l) {
    double mean = 0;
    for (int64_t e = 0; e < E; ++e) mean += static_cast<double>(load[l * E + e]) / static_cast<double>(E);
    float* bias = layers[l]->selection_bias.f32();
    for (int64_t e = 0; e < E; ++e) {
      const double c = static_cast<double>(load[l * E + e]);
      bias[e] += static_cast<float>(c < mean ? rate : (c > mean ? -rate : 0.0));
    }
  }
}

}  // namespace moe
