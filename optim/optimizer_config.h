// The settings of the optimizer, its learning-rate schedule, clipping and accumulation: the keys of
// the run configuration's `optim:` section, named as it spells them, with their defaults
// (launch/config/train_config.cpp binds each key to its field here) and accepted ranges.
#pragma once

#include <cstdint>

#include "core/parameters.h"
#include "core/value_range.h"

namespace moe {

enum class OptimizerKind { AdamW, SGD };

// How the learning rate goes from lr to min_lr after warm-up (optim/lr_schedule.h).
enum class LrDecay { Cosine, Linear, Constant };

struct OptimizerConfig {
  OptimizerKind name = OptimizerKind::AdamW;
  double lr = 3e-3;                     // peak, reached at the end of warm-up
  double min_lr = 3e-4;                 // reached at the end of the decay; <= lr
  int64_t warmup_steps = 20;
  LrDecay schedule = LrDecay::Cosine;
  float beta1 = 0.9f;                   // adamw
  float beta2 = 0.95f;                  // adamw
  float eps = 1e-8f;                    // adamw
  float momentum = 0.9f;                // sgd; 0 = plain SGD
  float weight_decay = 0.1f;            // the decay group: parameters registered with weight_decay = true
  bool decay_norms_and_biases = false;  // the no-decay group (norm gains, biases) decays too when true
  double grad_clip = 1.0;               // max global gradient norm; 0 = off
  int64_t grad_accum_steps = 1;         // micro-batches per optimizer step

  // The accepted range of each number above: validate() checks them, the run configuration's schema
  // quotes them.
  static constexpr Range kLrRange = above(0);
  static constexpr Range kMinLrRange = at_least(0);  // and <= lr
  static constexpr Range kWarmupStepsRange = at_least(0);
  static constexpr Range kBetaRange = closed_open(0, 1);
  static constexpr Range kEpsRange = above(0);
  static constexpr Range kMomentumRange = closed_open(0, 1);
  static constexpr Range kWeightDecayRange = at_least(0);
  static constexpr Range kGradClipRange = at_least(0);
  static constexpr Range kGradAccumStepsRange = at_least(1);

  // Throws InvalidArgument naming the first bad field as the run configuration spells its key
  // ("beta1 = 1 ..."), its value and what is accepted: each number's range, min_lr <= lr.
  void validate() const;
  // The decoupled weight decay the optimizer applies to `p`: weight_decay for the decay group (and
  // for every parameter with decay_norms_and_biases), else 0.
  float weight_decay_of(const Parameter& p) const {
    return p.weight_decay || decay_norms_and_biases ? weight_decay : 0.0f;
  }
  bool operator==(const OptimizerConfig&) const = default;
};

}  // namespace moe
