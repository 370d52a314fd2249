// AdamW (Loshchilov & Hutter): p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
#include "optim/adamw.h"

#include <cmath>

#include "core/check.h"

namespace moe {

void AdamWConfig::validate() const {
  MOE_REQUIRE(beta1 >= 0.f && beta1 < 1.f, "adamw beta1 = ", beta1, " must be in [0, 1)");
  MOE_REQUIRE(beta2 >= 0.f && beta2 < 1.f, "adamw beta2 = ", beta2, " must be in [0, 1)");
  MOE_REQUIRE(eps > 0.f, "adamw eps = ", eps, " must be > 0");
  MOE_REQUIRE(weight_decay >= 0.f, "adamw weight_decay = ", weight_decay, " must be >= 0");
}

AdamW::AdamW(ParameterRegistry& registry, const AdamWConfig& cfg) : registry_(registry), cfg_(cfg) {
  cfg_.validate();
  for (const Parameter& p : registry_.all()) {
    m_.push_back(Tensor::zeros(p.value.shape()));
    v_.push_back(Tensor::zeros(p.value.shape()));
  }
}

void AdamW::step(float lr) {
  auto& params = registry_.all();
  MOE_ASSERT(params.size() == m_.size(), "registry changed after the optimizer was built");
  ++step_;
  const float b1 = cfg_.beta1, b2 = cfg_.beta2;
  const float c1 = 1.f - std::pow(b1, static_cast<float>(step_));
  const float c2 = 1.f - std::pow(b2, static_cast<float>(step_));
  for (size_t i = 0; i < params.size(); ++i) {
    float* w = params[i].value.f32();
    const float* g = params[i].grad.f32();
    float* m = m_[i].f32();
    float* v = v_[i].f32();
    const float wd = params[i].weight_decay ? cfg_.weight_decay : 0.f;
    for (int64_t j = 0; j < params[i].value.numel(); ++j) {
      m[j] = b1 * m[j] + (1.f - b1) * g[j];
      v[j] = b2 * v[j] + (1.f - b2) * g[j] * g[j];
      w[j] -= lr * ((m[j] / c1) / (std::sqrt(v[j] / c2) + cfg_.eps) + wd * w[j]);
    }
  }
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() {
  std::vector<std::pair<std::string, Tensor>> out;
  const auto& params = registry_.all();
  for (size_t i = 0; i < params.size(); ++i) {
    out.emplace_back("adamw.m." + params[i].name, m_[i]);
    out.emplace_back("adamw.v." + params[i].name, v_[i]);
  }
  return out;
}

}  // namespace moe
