// KVCache (core/model/kv_cache.h).
#include "core/model/kv_cache.h"

#include "core/check.h"

namespace moe {

KVCache::KVCache(int64_t n_layers, int64_t batch, int64_t capacity, int64_t d_model, Device device) {
  MOE_REQUIRE(n_layers >= 1 && batch >= 1 && capacity >= 1 && d_model >= 1, "KVCache: n_layers = ", n_layers,
              ", batch = ", batch, ", capacity = ", capacity, ", d_model = ", d_model, " must all be >= 1");
  for (int64_t i = 0; i < n_layers; ++i) {
    k.push_back(Tensor::empty({batch, capacity, d_model}, DType::F32, device));
    v.push_back(Tensor::empty({batch, capacity, d_model}, DType::F32, device));
  }
}

}  // namespace moe
