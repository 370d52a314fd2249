// Learning-rate schedule: linear warm-up, then cosine, linear or constant decay to min_lr.
#pragma once

#include <cstdint>

#include "optim/optimizer_config.h"

namespace moe {

// The schedule of cfg's lr, min_lr, warmup_steps and schedule over a run of total_steps steps.
class LrSchedule {
 public:
  // Throws InvalidArgument for a bad cfg (OptimizerConfig::validate).
  LrSchedule(const OptimizerConfig& cfg, int64_t total_steps);

  // Learning rate for 0-based step `step`: lr * (step + 1) / warmup_steps during warm-up; then the
  // decay from lr at step = warmup_steps to min_lr at step = total_steps - 1; min_lr after. A run no
  // longer than its warm-up stays at lr after it.
  double at(int64_t step) const;

 private:
  const OptimizerConfig cfg_;
  const int64_t total_steps_;
};

}  // namespace moe
