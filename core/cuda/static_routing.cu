// CUDA kernel of static routing (hash, table): each token's experts looked up by its id, weights 1/k.
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/index_check.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

// routes (V, k), token_ids (T) -> expert (T, k) = routes[token_ids], weight (T, k) = 1/k. One thread per
// (token, choice); the ids are checked on the device first.
void static_route_forward(Tensor& expert, Tensor& weight, const Tensor& routes, const Tensor& token_ids) {
  const char* op = "static_route_forward";
  const int64_t T = token_ids.dim(0), V = routes.dim(0), k = routes.dim(1);
  require_indices_in_range(op, "token_ids", token_ids, 0, V);
  const int32_t* id = i32(op, token_ids);
  const int32_t* r = i32(op, routes);
  int32_t* e = i32(op, expert);
  float* w = f32(op, weight);
  const float share = 1.0f / static_cast<float>(k);
  for_each(op, T * k, [=] __device__(int64_t i) {
    e[i] = r[static_cast<int64_t>(id[i / k]) * k + i % k];
    w[i] = share;
  });
}

}  // namespace moe::cuda
