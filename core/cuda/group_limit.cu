// CUDA kernel of group-limited routing's group choice (group_limit_forward, core/ops.h).
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"
#include "core/group_limit.h"

namespace moe::cuda {

// probs, limited (T, E), selection_bias (E) or null: limited = probs in each row's top_groups groups,
// -infinity elsewhere. A thread per (token, group): it recomputes the token's group scores (O(E) work,
// E is tens) to rank its own group, with the CPU's functions (core/group_limit.h), so the bits agree.
void group_limit_forward(Tensor& limited, const Tensor& probs, const Tensor* selection_bias, int64_t groups,
                         int64_t top_groups, int64_t terms) {
  const char* op = "group_limit_forward";
  const int64_t E = probs.dim(1), n = E / groups;
  const float* p = f32(op, probs);
  const float* bias = selection_bias != nullptr ? f32(op, *selection_bias) : nullptr;
  float* out = f32(op, limited);
  for_each(op, probs.dim(0) * groups, [=] __device__(int64_t i) {
    const int64_t t = i / groups, g = i % groups;
    const float* row = p + t * E;
    auto selection = [=](int64_t e) { return bias != nullptr ? row[e] + bias[e] : row[e]; };
    auto score_of = [=](int64_t h) { return group_score(selection, h * n, n, terms); };
    const bool kept = group_kept(score_of, g, groups, top_groups);
    for (int64_t e = g * n; e < (g + 1) * n; ++e) out[t * E + e] = kept ? row[e] : -INFINITY;
  });
}

}  // namespace moe::cuda
