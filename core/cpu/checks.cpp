// CPU kernel of the value checks: the first non-finite element of a tensor.
#include <cmath>

#include "core/backend.h"

namespace moe::cpu {

// x: n float32 elements, scanned in index order.
int64_t first_nonfinite(const Tensor& x) {
  const float* p = x.f32();
  for (int64_t i = 0; i < x.numel(); ++i)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

}  // namespace moe::cpu
