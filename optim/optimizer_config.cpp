// Validation of the optimizer's settings (optim/optimizer_config.h).
#include "optim/optimizer_config.h"

#include "core/check.h"

namespace moe {

void OptimizerConfig::validate() const {
  require_in_range("lr", lr, kLrRange);
  require_in_range("min_lr", min_lr, kMinLrRange);
  MOE_REQUIRE(min_lr <= lr, "min_lr = ", format_number(min_lr), " must be <= lr = ", format_number(lr));
  require_in_range("warmup_steps", warmup_steps, kWarmupStepsRange);
  require_in_range("beta1", beta1, kBetaRange);
  require_in_range("beta2", beta2, kBetaRange);
  require_in_range("eps", eps, kEpsRange);
  require_in_range("momentum", momentum, kMomentumRange);
  require_in_range("weight_decay", weight_decay, kWeightDecayRange);
  require_in_range("grad_clip", grad_clip, kGradClipRange);
  require_in_range("grad_accum_steps", grad_accum_steps, kGradAccumStepsRange);
}

}  // namespace moe
