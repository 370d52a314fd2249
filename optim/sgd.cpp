// SGD with momentum (optim/sgd.h).
#include "optim/sgd.h"

#include "core/check.h"
#include "core/optim_ops.h"

namespace moe {

void SgdConfig::validate() const {
  MOE_REQUIRE(momentum >= 0.f && momentum < 1.f, "sgd momentum = ", momentum, " must be in [0, 1)");
  MOE_REQUIRE(weight_decay >= 0.f, "sgd weight_decay = ", weight_decay, " must be >= 0");
}

Sgd::Sgd(ParameterRegistry& registry, const SgdConfig& cfg) : registry_(registry), cfg_(cfg) {
  cfg_.validate();
  for (const Parameter& p : registry_.all()) momentum_.push_back(Tensor::zeros(p.value.shape()));
}

void Sgd::step(float lr) {
  auto& params = registry_.all();
  MOE_ASSERT(params.size() == momentum_.size(), "registry changed after the optimizer was built");
  ++step_;
  for (size_t i = 0; i < params.size(); ++i) {
    const float wd = params[i].weight_decay ? cfg_.weight_decay : 0.f;
    sgd_update(params[i].value, momentum_[i], params[i].grad, lr, cfg_.momentum, wd);
  }
}

std::vector<std::pair<std::string, Tensor>> Sgd::state() {
  std::vector<std::pair<std::string, Tensor>> out;
  const auto& params = registry_.all();
  for (size_t i = 0; i < params.size(); ++i) out.emplace_back("sgd.momentum." + params[i].name, momentum_[i]);
  return out;
}

}  // namespace moe
