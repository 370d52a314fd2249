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

std::vector<std::string> optimizer_state_names(OptimizerKind kind, const std::string& param) {
  if (kind == OptimizerKind::SGD) return {"sgd.momentum." + param};
  return {"adamw.m." + param, "adamw.v." + param};
}

namespace {
// The prefix of `name` that makes it an optimizer state name ("adamw.m."), or "" when none does.
std::string state_prefix(const std::string& name) {
  for (OptimizerKind kind : {OptimizerKind::AdamW, OptimizerKind::SGD})
    for (const std::string& prefix : optimizer_state_names(kind, ""))
      if (name.rfind(prefix, 0) == 0) return prefix;
  return "";
}
}  // namespace

bool is_optimizer_state(const std::string& name) { return !state_prefix(name).empty(); }

std::string parameter_of(const std::string& name) { return name.substr(state_prefix(name).size()); }

}  // namespace moe
