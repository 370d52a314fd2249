// CPU kernel filling regular index tensors (positions, strided rows).
#include "core/backend.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

// index (N) int32 = start + step * (n mod period); the front-end checked that every value fits int32.
void index_ramp(Tensor& index, int64_t start, int64_t step, int64_t period) {
  const int64_t N = index.numel();
  int32_t* out = index.i32();
#pragma omp parallel for if (N >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) out[n] = static_cast<int32_t>(start + step * (n % period));
}

}  // namespace moe::cpu
