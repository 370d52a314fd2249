// The optimizer interface the trainer steps, and the factory over optimizer kinds.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/parameters.h"

namespace moe {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every registered parameter from its gradient, at learning rate lr.
  virtual void step(float lr) = 0;
  virtual int64_t steps_taken() const = 0;
  // Named state tensors, for checkpoints: "<optimizer>.<slot>.<parameter name>" (e.g.
  // "adamw.m.layers.0.attn.w_qkv"), each of its parameter's shape. The tensors share storage with
  // the optimizer, so writing into them restores the state.
  virtual std::vector<std::pair<std::string, Tensor>> state() = 0;
  virtual void set_steps_taken(int64_t steps) = 0;
};

}  // namespace moe
