// CUDA kernel filling regular index tensors (positions, strided rows).
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

// index (N) int32 = start + step * (n mod period); the front-end checked that every value fits int32.
void index_ramp(Tensor& index, int64_t start, int64_t step, int64_t period) {
  int32_t* out = i32("index_ramp", index);
  for_each("index_ramp", index.numel(),
           [=] __device__(int64_t n) { out[n] = static_cast<int32_t>(start + step * (n % period)); });
}

}  // namespace moe::cuda
