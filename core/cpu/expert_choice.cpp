// CPU kernel of expert-choice routing's selection: each expert's top C tokens by score.
#include <algorithm>
#include <vector>

#include "core/backend.h"

namespace moe::cpu {

// scores (T, E) -> token (E, C): per expert, a partial sort of the token ids by (score descending,
// token ascending), a strict order, so the result does not depend on the sort's algorithm.
void expert_choice_topk(Tensor& token, const Tensor& scores) {
  const int64_t T = scores.dim(0), E = scores.dim(1), C = token.dim(1);
  const float* s = scores.f32();
  int32_t* out = token.i32();
  std::vector<int32_t> ids(T);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>(t);
    auto better = [&](int32_t a, int32_t b) {
      const float sa = s[a * E + e], sb = s[b * E + e];
      return sa > sb || (sa == sb && a < b);
    };
    std::partial_sort(ids.begin(), ids.begin() + C, ids.end(), better);
    std::copy(ids.begin(), ids.begin() + C, out + e * C);
  }
}

}  // namespace moe::cpu
