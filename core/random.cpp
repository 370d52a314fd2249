// Filling tensors from counter-based random streams (core/random.h).
#include "core/random.h"

#include "core/cpu/omp_threshold.h"

namespace moe {

void fill_normal(Tensor& t, float std, uint64_t stream, uint64_t offset) {
  float* p = t.f32();
  const int64_t n = t.numel();
  // Each element is a function of its counter alone: the same values on any number of threads.
#pragma omp parallel for schedule(static) if (n >= cpu::kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) p[i] = std * standard_normal(stream, offset + i);
}

Tensor random_normal(const Shape& shape, float std, uint64_t stream, Device device, uint64_t offset) {
  Tensor t = Tensor::empty(shape);
  fill_normal(t, std, stream, offset);
  return t.to(device);
}

void fill_uniform(Tensor& t, float lo, float hi, uint64_t stream, uint64_t offset) {
  float* p = t.f32();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n >= cpu::kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) p[i] = lo + (hi - lo) * uniform01(stream, offset + i);
}

}  // namespace moe
