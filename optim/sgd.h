// SGD with momentum (heavy ball) and decoupled weight decay over the parameter registry.
#pragma once

#include <vector>

#include "optim/optimizer.h"

namespace moe {

// Uses cfg's momentum and weight decay: buf = momentum * buf + grad;  p -= lr * (buf + wd * p).
class Sgd : public Optimizer {
 public:
  Sgd(ParameterRegistry& registry, const OptimizerConfig& cfg);
  void step(float lr) override;
  std::vector<std::pair<std::string, Tensor>> state() override;

 private:
  std::vector<Tensor> momentum_;  // indexed like registry.all()
};

}  // namespace moe
