// AdamW (Loshchilov & Hutter): p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
#include "optim/adamw.h"

#include <cmath>

#include "core/check.h"
#include "core/optim_ops.h"

namespace moe {

AdamW::AdamW(ParameterRegistry& registry, const OptimizerConfig& cfg) : Optimizer(registry, cfg) {
  for (const Parameter& p : registry_.all()) {
    m_.push_back(Tensor::zeros(p.value.shape(), DType::F32, p.value.device()));
    v_.push_back(Tensor::zeros(p.value.shape(), DType::F32, p.value.device()));
  }
}

void AdamW::step(float lr) {
  auto& params = registry_.all();
  MOE_ASSERT(params.size() == m_.size(), "registry changed after the optimizer was built");
  ++step_;
  const float b1 = cfg_.beta1, b2 = cfg_.beta2;
  const float c1 = 1.f - std::pow(b1, static_cast<float>(step_));
  const float c2 = 1.f - std::pow(b2, static_cast<float>(step_));
  AdamWScalars s{lr, b1, b2, c1, c2, cfg_.eps, 0.f};
  for (size_t i = 0; i < params.size(); ++i) {
    s.weight_decay = cfg_.weight_decay_of(params[i]);
    adamw_update(params[i].value, m_[i], v_[i], params[i].grad, s);
  }
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() {
  std::vector<std::pair<std::string, Tensor>> out;
  const auto& params = registry_.all();
  for (size_t i = 0; i < params.size(); ++i) {
    const std::vector<std::string> names = optimizer_state_names(OptimizerKind::AdamW, params[i].name);
    out.emplace_back(names[0], m_[i]);
    out.emplace_back(names[1], v_[i]);
  }
  return out;
}

}  // namespace moe
