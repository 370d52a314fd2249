// AdamW over the parameter registry: decoupled weight decay, bias-corrected moments.
#pragma once

#include <vector>

#include "optim/optimizer.h"

namespace moe {

// Uses cfg's beta1, beta2, eps and weight decay; keeps first and second moments for every
// registered parameter.
class AdamW : public Optimizer {
 public:
  AdamW(ParameterRegistry& registry, const OptimizerConfig& cfg);
  void step(float lr) override;
  std::vector<std::pair<std::string, Tensor>> state() override;

 private:
  std::vector<Tensor> m_, v_;  // indexed like registry.all()
};

}  // namespace moe
