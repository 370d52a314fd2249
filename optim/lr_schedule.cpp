// Learning-rate schedule (optim/lr_schedule.h).
#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace moe {

LrSchedule::LrSchedule(const OptimizerConfig& cfg, int64_t total_steps) : cfg_(cfg), total_steps_(total_steps) {
  cfg_.validate();
}

double LrSchedule::at(int64_t step) const {
  const double lr = cfg_.lr, min_lr = cfg_.min_lr;
  const int64_t warmup_steps = cfg_.warmup_steps;
  if (step < warmup_steps) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  if (cfg_.schedule == LrDecay::Constant) return lr;
  const int64_t span = total_steps_ - 1 - warmup_steps;
  if (span <= 0) return lr;
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(span));
  const double shape = cfg_.schedule == LrDecay::Cosine ? 0.5 * (1.0 + std::cos(M_PI * progress)) : 1.0 - progress;
  return min_lr + (lr - min_lr) * shape;
}

}  // namespace moe
