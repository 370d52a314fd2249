// CPU conversions between float32 and bfloat16 (core/bfloat16.h's rounding), in loops the compiler
// vectorises.
#include "core/backend.h"
#include "core/bfloat16.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

// y = x converted, float32 -> bfloat16 or bfloat16 -> float32 (the front-end checked which).
void convert(Tensor& y, const Tensor& x) {
  const int64_t n = x.numel();
  if (x.dtype() == DType::F32) {
    const float* px = x.f32();
    uint16_t* py = y.bf16();
#pragma omp parallel for simd if (n >= kMinParallelElements)
    for (int64_t i = 0; i < n; ++i) py[i] = bf16_from_float(px[i]);
  } else {
    const uint16_t* px = x.bf16();
    float* py = y.f32();
#pragma omp parallel for simd if (n >= kMinParallelElements)
    for (int64_t i = 0; i < n; ++i) py[i] = float_from_bf16(px[i]);
  }
}

}  // namespace moe::cpu
