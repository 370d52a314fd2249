// Learning-rate schedule: linear warm-up, then cosine, linear or constant decay to min_lr.
#pragma once

#include <cstdint>

namespace moe {

enum class LrDecay { Cosine, Linear, Constant };

struct LrSchedule {
  double lr = 3e-3;          // peak, reached at the end of warm-up
  double min_lr = 3e-4;      // reached at total_steps (cosine, linear)
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  LrDecay decay = LrDecay::Cosine;

  // Learning rate for 0-based step `step`: lr * (step + 1) / warmup_steps during warm-up; then the
  // decay from lr at step = warmup_steps to min_lr at step = total_steps - 1; min_lr after.
  double at(int64_t step) const;
};

}  // namespace moe
