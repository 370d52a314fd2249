// The optimizer interface the trainer steps, and the factory over optimizer kinds.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/parameters.h"
#include "optim/optimizer_config.h"

namespace moe {

// Keeps its state for every registered parameter; the registry must not gain or lose parameters
// after construction, and must outlive the optimizer.
class Optimizer {
 public:
  // Throws InvalidArgument for a bad cfg (OptimizerConfig::validate).
  Optimizer(ParameterRegistry& registry, const OptimizerConfig& cfg);
  virtual ~Optimizer() = default;
  // One update of every registered parameter from its gradient, at learning rate lr, with the decay
  // cfg.weight_decay_of(parameter).
  virtual void step(float lr) = 0;
  // Named state tensors, for checkpoints: "<optimizer>.<slot>.<parameter name>" (e.g.
  // "adamw.m.layers.0.attn.w_qkv"), each of its parameter's shape. The tensors share storage with
  // the optimizer, so writing into them restores the state.
  virtual std::vector<std::pair<std::string, Tensor>> state() = 0;
  int64_t steps_taken() const { return step_; }
  void set_steps_taken(int64_t steps) { step_ = steps; }

 protected:
  ParameterRegistry& registry_;
  const OptimizerConfig cfg_;
  int64_t step_ = 0;
};

// The optimizer cfg.name names (AdamW or Sgd) over `registry`. Throws InvalidArgument for a bad cfg.
std::unique_ptr<Optimizer> make_optimizer(ParameterRegistry& registry, const OptimizerConfig& cfg);

// The names of the state tensors an optimizer of `kind` keeps for parameter `param`, in the order its
// state() lists them: "adamw.m.<param>", "adamw.v.<param>" (AdamW); "sgd.momentum.<param>" (SGD).
std::vector<std::string> optimizer_state_names(OptimizerKind kind, const std::string& param);
// Whether `name` is an optimizer state tensor's name, of either kind.
bool is_optimizer_state(const std::string& name);
// The parameter an optimizer state name belongs to ("adamw.m.layers.0.moe.w_in" -> "layers.0.moe.w_in");
// any other name is returned as it is.
std::string parameter_of(const std::string& name);

}  // namespace moe
