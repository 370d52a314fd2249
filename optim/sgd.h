// SGD with momentum (heavy ball) and decoupled weight decay over the parameter registry.
#pragma once

#include <vector>

#include "core/parameters.h"
#include "optim/optimizer.h"

namespace moe {

struct SgdConfig {
  float momentum = 0.9f;      // [0, 1); 0 = plain SGD
  float weight_decay = 0.0f;  // applied only to parameters registered with weight_decay = true

  void validate() const;  // InvalidArgument naming the bad field and its accepted range
};

// buf = momentum * buf + grad;  p -= lr * (buf + wd * p).
class Sgd : public Optimizer {
 public:
  Sgd(ParameterRegistry& registry, const SgdConfig& cfg);
  void step(float lr) override;
  int64_t steps_taken() const override { return step_; }
  void set_steps_taken(int64_t steps) override { step_ = steps; }
  std::vector<std::pair<std::string, Tensor>> state() override;

 private:
  ParameterRegistry& registry_;
  SgdConfig cfg_;
  std::vector<Tensor> momentum_;  // indexed like registry.all()
  int64_t step_ = 0;
};

}  // namespace moe
