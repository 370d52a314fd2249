// CPU kernel of static routing (hash, table): each token's experts looked up by its id, weights 1/k.
#include "core/backend.h"
#include "core/cpu/index_check.h"

namespace moe::cpu {

// routes (V, k), token_ids (T) -> expert (T, k) = routes[token_ids], weight (T, k) = 1/k.
void static_route_forward(Tensor& expert, Tensor& weight, const Tensor& routes, const Tensor& token_ids) {
  const int64_t T = token_ids.dim(0), V = routes.dim(0), k = routes.dim(1);
  require_indices_in_range("static_route_forward", "token_ids", token_ids, 0, V);
  const int32_t* id = token_ids.i32();
  const int32_t* r = routes.i32();
  int32_t* e = expert.i32();
  float* w = weight.f32();
  const float share = 1.0f / static_cast<float>(k);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      e[t * k + j] = r[id[t] * k + j];
      w[t * k + j] = share;
    }
}

}  // namespace moe::cpu
