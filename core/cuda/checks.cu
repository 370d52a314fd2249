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

// Copies element `position` of the int32 `index` to the host and throws its out-of-range error.
[[noreturn]] void throw_bad_index(const char* op, const char* arg, const Tensor& index, int64_t position, int64_t lo,
                                  int64_t hi, const char* note) {
  int32_t value = 0;
  MOE_CUDA_CHECK(op, cudaMemcpy(&value, i32(op, index) + position, sizeof value, cudaMemcpyDeviceToHost));
  throw_index_out_of_range(op, arg, index.shape(), position, value, lo, hi, note);
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
  if (first != n) throw_bad_index(op, arg, index, first, lo, hi, note);
}

void require_document_positions(const char* op, const Tensor& positions, int64_t seq_len) {
  const int32_t* p = i32(op, positions);
  const int64_t n = positions.numel();
  const int64_t first = first_failing(op, n, [=] __device__(int64_t i) { return p[i] >= 0 && p[i] <= i % seq_len; });
  if (first != n) throw_bad_index(op, "positions", positions, first, 0, first % seq_len + 1, kDocumentPositionNote);
}

}  // namespace moe::cuda
