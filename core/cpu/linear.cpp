// CPU linear layers through moe::gemm (row-major float32): y = x w + b, and y = x w^T for a weight
// stored (out, in) such as a tied output head; forward and backward.
#include "core/backend.h"
#include "core/cpu/gemm.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

// y (N, out) = x (N, in) w (in, out) + b (out).
void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  float* py = y.f32();
  gemm(false, false, N, out, in, 1.f, x.f32(), in, w.f32(), out, 0.f, py, out);
  if (b == nullptr) return;
  const float* pb = b->f32();
#pragma omp parallel for if (N * out >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < out; ++j) py[n * out + j] += pb[j];
}

// dx (N, in) += dy (N, out) w^T;  dw (in, out) += x^T dy;  db (out) += column sums of dy.
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  const float* pdy = dy.f32();
  if (dx != nullptr) gemm(false, true, N, in, out, 1.f, pdy, out, w.f32(), out, 1.f, dx->f32(), in);
  if (dw != nullptr) gemm(true, false, in, out, N, 1.f, x.f32(), in, pdy, out, 1.f, dw->f32(), out);
  if (db != nullptr) {
    float* pdb = db->f32();
    for (int64_t n = 0; n < N; ++n)  // rows all add into the same db: not parallel over n
      for (int64_t j = 0; j < out; ++j) pdb[j] += pdy[n * out + j];
  }
}

// y (N, out) = x (N, in) w^T, w stored (out, in).
void linear_transposed_forward(Tensor& y, const Tensor& x, const Tensor& w) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  gemm(false, true, N, out, in, 1.f, x.f32(), in, w.f32(), in, 0.f, y.f32(), out);
}

// dx (N, in) += dy (N, out) w;  dw (out, in) += dy^T x.
void linear_transposed_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  const float* pdy = dy.f32();
  if (dx != nullptr) gemm(false, false, N, in, out, 1.f, pdy, out, w.f32(), in, 1.f, dx->f32(), in);
  if (dw != nullptr) gemm(true, false, out, in, N, 1.f, pdy, out, x.f32(), in, 1.f, dw->f32(), in);
}

}  // namespace moe::cpu
