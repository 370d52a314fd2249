// CUDA kernels of the value checks: the first non-finite element of a tensor, and the range check of
// index tensors (core/cuda/index_check.h).
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/index_check.h"
#include "core/cuda/launch.cuh"
#include "core/index_error.h"

namespace moe::cuda {

namespace {
// The smallest flat position whose element fails `ok`, n when none does.
template <class Ok>
int64_t first_failing(const char* op, int64_t n, Ok ok) {
  return reduce_to_host<long long>(op, n, n, [=] __device__(int64_t i) -> long long { return ok(i) ? n : i; }, Min{});
}
}  // namespace

// x: n float32 elements.
int64_t first_nonfinite(const Tensor& x) {
  const char* op = "first_nonfinite";
  const float* p = f32(op, x);
  const int64_t n = x.numel();
  const int64_t first = first_failing(op, n, [=] __device__(int64_t i) { return isfinite(p[i]); });
  return first == n ? -1 : first;
}

void require_indices_in_range(const char* op, const char* arg, const Tensor& index, int64_t lo, int64_t hi,
                              const char* note) {
  const int32_t* p = i32(op, index);
  const int64_t n = index.numel();
  const int64_t first = first_failing(op, n, [=] __device__(int64_t i) { return p[i] >= lo && p[i] < hi; });
  if (first == n) return;
  int32_t value = 0;
  MOE_CUDA_CHECK(op, cudaMemcpy(&value, p + first, sizeof value, cudaMemcpyDeviceToHost));
  throw_index_out_of_range(op, arg, index.shape(), first, value, lo, hi, note);
}

}  // namespace moe::cuda
