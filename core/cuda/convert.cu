// CUDA conversions between float32 and bfloat16 (cuda_bf16.h's round-to-nearest-even, as the CPU's).
#include <cuda_bf16.h>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

// y = x converted, float32 -> bfloat16 or bfloat16 -> float32 (the front-end checked which).
void convert(Tensor& y, const Tensor& x) {
  const char* op = "convert";
  if (x.dtype() == DType::F32) {
    const float* px = f32(op, x);
    auto* py = reinterpret_cast<__nv_bfloat16*>(bf16(op, y));
    for_each(op, x.numel(), [=] __device__(int64_t i) { py[i] = __float2bfloat16_rn(px[i]); });
  } else {
    const auto* px = reinterpret_cast<const __nv_bfloat16*>(bf16(op, x));
    float* py = f32(op, y);
    for_each(op, x.numel(), [=] __device__(int64_t i) { py[i] = __bfloat162float(px[i]); });
  }
}

}  // namespace moe::cuda
