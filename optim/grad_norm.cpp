// Global gradient norm and clipping (optim/grad_norm.h).
#include "optim/grad_norm.h"

#include <cmath>

#include "core/optim_ops.h"

namespace moe {

double global_grad_norm(const ParameterRegistry& registry, const ProcessGroups* groups) {
  double dense = 0.0, expert = 0.0;
  for (const Parameter& p : registry.all()) (p.kind == ParamKind::Dense ? dense : expert) += sum_of_squares(p.grad);
  if (groups != nullptr) expert = all_reduce_value(*groups->expert_parallel.control, expert);
  return std::sqrt(dense + expert);
}

double clip_gradients(ParameterRegistry& registry, double norm, double max_norm) {
  if (!(max_norm > 0.0) || !(norm > max_norm)) return 1.0;
  const double scale = max_norm / norm;
  for (Parameter& p : registry.all()) scale_in_place(p.grad, scale);
  return scale;
}

}  // namespace moe
