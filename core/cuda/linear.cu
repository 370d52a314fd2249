// CUDA linear layers through cuBLAS (row-major float32): y = x w + b, and y = x w^T for a weight
// stored (out, in) such as a tied output head; forward and backward.
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/gemm.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

// y (N, out) = x (N, in) w (in, out) + b (out).
void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
  const char* op = "linear_forward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  float* py = f32(op, y);
  gemm(op, false, false, N, out, in, 1.f, f32(op, x), in, f32(op, w), out, 0.f, py, out);
  if (b == nullptr) return;
  const float* pb = f32(op, *b);
  for_each(op, N * out, [=] __device__(int64_t i) { py[i] += pb[i % out]; });
}

// dx (N, in) += dy (N, out) w^T;  dw (in, out) += x^T dy;  db (out) += column sums of dy.
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_backward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  const float* pdy = f32(op, dy);
  if (dx != nullptr) gemm(op, false, true, N, in, out, 1.f, pdy, out, f32(op, w), out, 1.f, f32(op, *dx), in);
  if (dw != nullptr) gemm(op, true, false, in, out, N, 1.f, f32(op, x), in, pdy, out, 1.f, f32(op, *dw), out);
  if (db != nullptr) {
    float* pdb = f32(op, *db);
    column_reduce<float>(
        op, N, out, [=] __device__(int64_t n, int64_t j) { return pdy[n * out + j]; },
        [=] __device__(int64_t j, float s) { pdb[j] += s; });
  }
}

// y (N, out) = x (N, in) w^T, w stored (out, in).
void linear_transposed_forward(Tensor& y, const Tensor& x, const Tensor& w) {
  const char* op = "linear_transposed_forward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  gemm(op, false, true, N, out, in, 1.f, f32(op, x), in, f32(op, w), in, 0.f, f32(op, y), out);
}

// dx (N, in) += dy (N, out) w;  dw (out, in) += dy^T x.
void linear_transposed_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_transposed_backward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  const float* pdy = f32(op, dy);
  if (dx != nullptr) gemm(op, false, false, N, in, out, 1.f, pdy, out, f32(op, w), in, 1.f, f32(op, *dx), in);
  if (dw != nullptr) gemm(op, true, false, out, in, N, 1.f, pdy, out, f32(op, x), in, 1.f, f32(op, *dw), in);
}

}  // namespace moe::cuda
