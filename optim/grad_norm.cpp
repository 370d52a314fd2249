// Global gradient norm and clipping (optim/grad_norm.h).
#include "optim/grad_norm.h"

#include <cmath>

namespace moe {

double global_grad_norm(const ParameterRegistry& registry, const ProcessGroups* groups) {
  double dense = 0.0, expert = 0.0;
  for (const Parameter& p : registry.all()) {
    const float* g = p.grad.f32();
    double s = 0.0;
    for (int64_t i = 0; i < p.grad.numel(); ++i) s += static_cast<double>(g[i]) * g[i];
    (p.kind == ParamKind::Dense ? dense : expert) += s;
  }
  if (groups != nullptr) expert = all_reduce_value(*groups->expert_parallel, expert);
  return std::sqrt(dense + expert);
}

double clip_gradients(ParameterRegistry& registry, double norm, double max_norm) {
  if (!(max_norm > 0.0) || !(norm > max_norm)) return 1.0;
  const double scale = max_norm / norm;
  for (Parameter& p : registry.all()) {
    float* g = p.grad.f32();
    for (int64_t i = 0; i < p.grad.numel(); ++i) g[i] = static_cast<float>(g[i] * scale);
  }
  return scale;
}

}  // namespace moe
