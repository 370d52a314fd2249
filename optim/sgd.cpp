// SGD with momentum (optim/sgd.h).
#include "optim/sgd.h"

#include "core/check.h"
#include "core/optim_ops.h"

namespace moe {

Sgd::Sgd(ParameterRegistry& registry, const OptimizerConfig& cfg) : Optimizer(registry, cfg) {
  for (const Parameter& p : registry_.all())
    momentum_.push_back(Tensor::zeros(p.value.shape(), DType::F32, p.value.device()));
}

void Sgd::step(float lr) {
  auto& params = registry_.all();
  MOE_ASSERT(params.size() == momentum_.size(), "registry changed after the optimizer was built");
  ++step_;
  for (size_t i = 0; i < params.size(); ++i) {
    sgd_update(params[i].value, momentum_[i], params[i].grad, lr, cfg_.momentum, cfg_.weight_decay_of(params[i]));
  }
}

std::vector<std::pair<std::string, Tensor>> Sgd::state() {
  std::vector<std::pair<std::string, Tensor>> out;
  const auto& params = registry_.all();
  for (size_t i = 0; i < params.size(); ++i)
    out.emplace_back(optimizer_state_names(OptimizerKind::SGD, params[i].name)[0], momentum_[i]);
  return out;
}

}  // namespace moe
