// CPU row movement for the MoE dispatch: gather, scatter-add, weighted combine; and y += alpha x.
#include <cstring>

#include "core/backend.h"
#include "core/bfloat16.h"
#include "core/cpu/index_check.h"
#include "core/cpu/omp_threshold.h"
#include "core/cpu/row_gather.h"

namespace moe::cpu {

void gather_rows_for(const char* op, const char* index_arg, Tensor& y, const Tensor& x, const Tensor& index) {
  const int64_t M = index.dim(0), N = x.dim(0), C = x.dim(1);
  require_indices_in_range(op, index_arg, index, 0, N);
  const int32_t* pindex = index.i32();
  const size_t row_bytes = static_cast<size_t>(C * dtype_size(x.dtype()));  // a row copy: any dtype
  const char* px = static_cast<const char*>(x.data());
  char* py = static_cast<char*>(y.data());
#pragma omp parallel for if (M * C >= kMinParallelElements)
  for (int64_t m = 0; m < M; ++m) std::memcpy(py + m * row_bytes, px + pindex[m] * row_bytes, row_bytes);
}

void scatter_add_rows_for(const char* op, const char* index_arg, Tensor& dx, const Tensor& dy, const Tensor& index) {
  const int64_t M = index.dim(0), N = dx.dim(0), C = dx.dim(1);
  require_indices_in_range(op, index_arg, index, 0, N);
  const int32_t* pindex = index.i32();
  float* pdx = dx.f32();
  auto add = [&](auto element) {
    for (int64_t m = 0; m < M; ++m) {  // repeated indices add into the same row: not parallel over m
      float* dxrow = pdx + pindex[m] * C;
      for (int64_t c = 0; c < C; ++c) dxrow[c] += element(m * C + c);
    }
  };
  if (dy.dtype() == DType::BF16)
    add([p = dy.bf16()](int64_t i) { return float_from_bf16(p[i]); });
  else
    add([p = dy.f32()](int64_t i) { return p[i]; });
}

// y (M, C) = x (N, C) [index (M)].
void gather_rows(Tensor& y, const Tensor& x, const Tensor& index) { gather_rows_for("gather_rows", "index", y, x, index); }

// dx (N, C) [index[m]] += dy (M, C) [m].
void scatter_add_rows(Tensor& dx, const Tensor& dy, const Tensor& index) {
  scatter_add_rows_for("scatter_add_rows", "index", dx, dy, index);
}

// y (T, C) = sum_j weights (T, k) [t, j] * rows (M, C) [slot (T, k) [t, j]], skipping slot -1.
void combine_forward(Tensor& y, const Tensor& rows, const Tensor& slot, const Tensor& weights) {
  const int64_t T = slot.dim(0), k = slot.dim(1), M = rows.dim(0), C = rows.dim(1);
  require_indices_in_range("combine_forward", "slot", slot, -1, M, " (-1 contributes nothing)");
  const float* prows = rows.f32();
  const int32_t* pslot = slot.i32();
  const float* pweights = weights.f32();
  float* py = y.f32();
#pragma omp parallel for if (T * C >= kMinParallelElements)
  for (int64_t t = 0; t < T; ++t) {
    float* yrow = py + t * C;
    for (int64_t c = 0; c < C; ++c) yrow[c] = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t s = pslot[t * k + j];
      if (s < 0) continue;
      const float w = pweights[t * k + j];
      const float* row = prows + s * C;
      for (int64_t c = 0; c < C; ++c) yrow[c] += w * row[c];
    }
  }
}

// drows (M, C) [slot[t, j]] += weights[t, j] * dy (T, C) [t];
// dweights (T, k) [t, j] += dot(dy[t], rows[slot[t, j]]).
void combine_backward(Tensor* drows, Tensor* dweights, const Tensor& dy, const Tensor& rows,
                      const Tensor& slot, const Tensor& weights) {
  const int64_t T = slot.dim(0), k = slot.dim(1), M = rows.dim(0), C = rows.dim(1);
  require_indices_in_range("combine_backward", "slot", slot, -1, M, " (-1 contributes nothing)");
  const float* prows = rows.f32();
  const int32_t* pslot = slot.i32();
  const float* pweights = weights.f32();
  const float* pdy = dy.f32();
  if (dweights != nullptr) {
    float* pdweights = dweights->f32();
#pragma omp parallel for if (T * C >= kMinParallelElements)
    for (int64_t t = 0; t < T; ++t) {
      const float* dyrow = pdy + t * C;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t s = pslot[t * k + j];
        if (s < 0) continue;
        const float* row = prows + s * C;
        float dot = 0.f;
        for (int64_t c = 0; c < C; ++c) dot += dyrow[c] * row[c];
        pdweights[t * k + j] += dot;
      }
    }
  }
  if (drows != nullptr) {
    float* pdrows = drows->f32();
    for (int64_t t = 0; t < T; ++t) {  // two (t, j) may share a slot: not parallel over t
      const float* dyrow = pdy + t * C;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t s = pslot[t * k + j];
        if (s < 0) continue;
        const float w = pweights[t * k + j];
        float* drow = pdrows + s * C;
        for (int64_t c = 0; c < C; ++c) drow[c] += w * dyrow[c];
      }
    }
  }
}

// y += alpha * x, both of the same shape.
void add_scaled(Tensor& y, const Tensor& x, float alpha) {
  const int64_t n = y.numel();
  const float* px = x.f32();
  float* py = y.f32();
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) py[i] += alpha * px[i];
}

}  // namespace moe::cpu
