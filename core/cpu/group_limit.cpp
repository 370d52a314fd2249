// CPU kernel of group-limited routing's group choice (group_limit_forward, core/ops.h).
#include <limits>
#include <vector>

#include "core/backend.h"
#include "core/group_limit.h"

namespace moe::cpu {

// probs, limited (T, E), selection_bias (E) or null: limited = probs in each row's top_groups groups,
// -infinity elsewhere.
void group_limit_forward(Tensor& limited, const Tensor& probs, const Tensor* selection_bias, int64_t groups,
                         int64_t top_groups, int64_t terms) {
  const int64_t T = probs.dim(0), E = probs.dim(1), n = E / groups;
  const float* p = probs.f32();
  const float* bias = selection_bias != nullptr ? selection_bias->f32() : nullptr;
  float* out = limited.f32();
  std::vector<float> scores(groups);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = p + t * E;
    auto selection = [=](int64_t e) { return bias != nullptr ? row[e] + bias[e] : row[e]; };
    for (int64_t g = 0; g < groups; ++g) scores[g] = group_score(selection, g * n, n, terms);
    auto score_of = [&](int64_t g) { return scores[g]; };
    for (int64_t g = 0; g < groups; ++g) {
      const bool kept = group_kept(score_of, g, groups, top_groups);
      for (int64_t e = g * n; e < (g + 1) * n; ++e)
        out[t * E + e] = kept ? row[e] : -std::numeric_limits<float>::infinity();
    }
  }
}

}  // namespace moe::cpu
