// CUDA row movement for the MoE dispatch: gather, scatter-add, weighted combine; and y += alpha x.
// Scatter-adds into a row that several sources share use float atomics: the order of those additions,
// and so the last bits of such a row, may differ from run to run.
#include <cuda_bf16.h>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/index_check.h"
#include "core/cuda/launch.cuh"
#include "core/cuda/rows.h"

namespace moe::cuda {

void gather_rows_of(const char* op, const char* arg, Tensor& y, const Tensor& x, const Tensor& index) {
  const int64_t N = x.dim(0), C = x.dim(1);
  require_indices_in_range(op, arg, index, 0, N);
  const int32_t* pindex = i32(op, index);
  if (x.dtype() == DType::BF16) {  // a row copy: the bfloat16 bits as they are
    const uint16_t* px = bf16(op, x);
    uint16_t* py = bf16(op, y);
    for_each(op, y.numel(), [=] __device__(int64_t i) { py[i] = px[pindex[i / C] * C + i % C]; });
  } else {
    const float* px = f32(op, x);
    float* py = f32(op, y);
    for_each(op, y.numel(), [=] __device__(int64_t i) { py[i] = px[pindex[i / C] * C + i % C]; });
  }
}

void scatter_add_rows_of(const char* op, const char* arg, Tensor& dx, const Tensor& dy, const Tensor& index) {
  const int64_t N = dx.dim(0), C = dx.dim(1);
  require_indices_in_range(op, arg, index, 0, N);
  const int32_t* pindex = i32(op, index);
  float* pdx = f32(op, dx);
  if (dy.dtype() == DType::BF16) {
    const auto* pdy = reinterpret_cast<const __nv_bfloat16*>(bf16(op, dy));
    for_each(op, dy.numel(),
             [=] __device__(int64_t i) { atomicAdd(pdx + pindex[i / C] * C + i % C, __bfloat162float(pdy[i])); });
  } else {
    const float* pdy = f32(op, dy);
    for_each(op, dy.numel(), [=] __device__(int64_t i) { atomicAdd(pdx + pindex[i / C] * C + i % C, pdy[i]); });
  }
}

// y (M, C) = x (N, C) [index (M)].
void gather_rows(Tensor& y, const Tensor& x, const Tensor& index) { gather_rows_of("gather_rows", "index", y, x, index); }

// dx (N, C) [index[m]] += dy (M, C) [m].
void scatter_add_rows(Tensor& dx, const Tensor& dy, const Tensor& index) {
  scatter_add_rows_of("scatter_add_rows", "index", dx, dy, index);
}

// y (T, C) = sum_j weights (T, k) [t, j] * rows (M, C) [slot (T, k) [t, j]], skipping slot -1.
void combine_forward(Tensor& y, const Tensor& rows, const Tensor& slot, const Tensor& weights) {
  const char* op = "combine_forward";
  const int64_t k = slot.dim(1), M = rows.dim(0), C = rows.dim(1);
  require_indices_in_range(op, "slot", slot, -1, M, " (-1 contributes nothing)");
  const float* prows = f32(op, rows);
  const int32_t* pslot = i32(op, slot);
  const float* pweights = f32(op, weights);
  float* py = f32(op, y);
  for_each(op, y.numel(), [=] __device__(int64_t i) {
    const int64_t t = i / C, c = i % C;
    float sum = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t s = pslot[t * k + j];
      if (s >= 0) sum += pweights[t * k + j] * prows[s * C + c];
    }
    py[i] = sum;
  });
}

// drows (M, C) [slot[t, j]] += weights[t, j] * dy (T, C) [t];
// dweights (T, k) [t, j] += dot(dy[t], rows[slot[t, j]]).
void combine_backward(Tensor* drows, Tensor* dweights, const Tensor& dy, const Tensor& rows,
                      const Tensor& slot, const Tensor& weights) {
  const char* op = "combine_backward";
  const int64_t T = slot.dim(0), k = slot.dim(1), M = rows.dim(0), C = rows.dim(1);
  require_indices_in_range(op, "slot", slot, -1, M, " (-1 contributes nothing)");
  const float* prows = f32(op, rows);
  const int32_t* pslot = i32(op, slot);
  const float* pweights = f32(op, weights);
  const float* pdy = f32(op, dy);
  if (dweights != nullptr) {
    float* pdweights = f32(op, *dweights);
    for_each_row(op, T * k, [=] __device__(int64_t tj) {  // one block per (t, j)
      const int32_t s = pslot[tj];
      if (s < 0) return;  // the whole block returns: no block_sum is left waiting
      const float* dyrow = pdy + (tj / k) * C;
      float dot = 0.f;
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += dyrow[c] * prows[s * C + c];
      dot = block_sum(dot);
      if (threadIdx.x == 0) pdweights[tj] += dot;
    });
  }
  if (drows != nullptr) {
    float* pdrows = f32(op, *drows);
    for_each(op, T * k * C, [=] __device__(int64_t i) {  // two (t, j) may share a slot: atomics
      const int64_t tj = i / C, c = i % C;
      const int32_t s = pslot[tj];
      if (s >= 0) atomicAdd(pdrows + s * C + c, pweights[tj] * pdy[(tj / k) * C + c]);
    });
  }
}

// y += alpha * x, both of the same shape.
void add_scaled(Tensor& y, const Tensor& x, float alpha) {
  const char* op = "add_scaled";
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, y.numel(), [=] __device__(int64_t i) { py[i] += alpha * px[i]; });
}

}  // namespace moe::cuda
