// The optimizer base and the factory over optimizer kinds (optim/optimizer.h).
#include "optim/optimizer.h"

#include "optim/adamw.h"
#include "optim/sgd.h"

namespace moe {

Optimizer::Optimizer(ParameterRegistry& registry, const OptimizerConfig& cfg) : registry_(registry), cfg_(cfg) {
  cfg_.validate();
}

std::unique_ptr<Optimizer> make_optimizer(ParameterRegistry& registry, const OptimizerConfig& cfg) {
  if (cfg.name == OptimizerKind::SGD) return std::make_unique<Sgd>(registry, cfg);
  return std::make_unique<AdamW>(registry, cfg);
}

}  // namespace moe
