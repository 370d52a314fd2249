// AdamW over the parameter registry: decoupled weight decay, bias-corrected moments.
#pragma once

#include <cstdint>
#include <vector>

#include "core/parameters.h"
#include "optim/optimizer.h"

namespace moe {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // applied only to parameters registered with weight_decay = true

  void validate() const;  // InvalidArgument naming the bad field and its accepted range
};

// Keeps first and second moments for every registered parameter; the registry must not gain or
// lose parameters after construction.
class AdamW : public Optimizer {
 public:
  AdamW(ParameterRegistry& registry, const AdamWConfig& cfg);
  void step(float lr) override;
  int64_t steps_taken() const override { return step_; }
  void set_steps_taken(int64_t steps) override { step_ = steps; }
  std::vector<std::pair<std::string, Tensor>> state() override;

 private:
  ParameterRegistry& registry_;
  AdamWConfig cfg_;
  std::vector<Tensor> m_, v_;  // indexed like registry.all()
  int64_t step_ = 0;
};

}  // namespace moe
