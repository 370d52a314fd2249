// CPU token embedding: y = table[ids] and its backward, a scatter-add into the table's gradient.
#include <cstring>

#include "core/backend.h"
#include "core/cpu/index_check.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

// y (N, d) = table (V, d) [ids (N)].
void embedding_forward(Tensor& y, const Tensor& ids, const Tensor& table) {
  const int64_t N = ids.dim(0), V = table.dim(0), d = table.dim(1);
  require_indices_in_range("embedding_forward", "ids", ids, 0, V);
  const int32_t* pids = ids.i32();
  const float* ptable = table.f32();
  float* py = y.f32();
#pragma omp parallel for if (N * d >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(py + n * d, ptable + pids[n] * d, static_cast<size_t>(d) * sizeof(float));
}

// dtable (V, d) [ids[n]] += dy (N, d) [n].
void embedding_backward(Tensor& dtable, const Tensor& dy, const Tensor& ids) {
  const int64_t N = ids.dim(0), V = dtable.dim(0), d = dtable.dim(1);
  require_indices_in_range("embedding_backward", "ids", ids, 0, V);
  const int32_t* pids = ids.i32();
  const float* pdy = dy.f32();
  float* pdtable = dtable.f32();
  for (int64_t n = 0; n < N; ++n) {  // repeated ids add into the same row: not parallel over n
    float* drow = pdtable + pids[n] * d;
    const float* dyrow = pdy + n * d;
    for (int64_t j = 0; j < d; ++j) drow[j] += dyrow[j];
  }
}

}  // namespace moe::cpu
