// CUDA linear layers through cuBLAS (row-major float32, or bfloat16 inputs with float32 outputs):
// y = x w + b, and y = x w^T for a weight stored (out, in) such as a tied output head; forward and backward.
#include <cuda_bf16.h>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/gemm.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

namespace {

// C (M, N) float32 = op(A) op(B) + beta * C, with A and B both float32 or both bfloat16 (the front-end
// checked that they share a dtype).
void product(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const Tensor& A,
             int64_t lda, const Tensor& B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (A.dtype() == DType::BF16)
    gemm_bf16(op, trans_a, trans_b, M, N, K, bf16(op, A), lda, bf16(op, B), ldb, beta, C, ldc);
  else
    gemm(op, trans_a, trans_b, M, N, K, 1.f, f32(op, A), lda, f32(op, B), ldb, beta, C, ldc);
}

// db (out) += column sums of dy (N, out), float32 or bfloat16, summed in float32.
void add_column_sums(const char* op, float* db, const Tensor& dy) {
  const int64_t N = dy.dim(0), out = dy.dim(1);
  auto store = [=] __device__(int64_t j, float s) { db[j] += s; };
  if (dy.dtype() == DType::BF16) {
    const auto* p = reinterpret_cast<const __nv_bfloat16*>(bf16(op, dy));
    column_reduce<float>(
        op, N, out, [=] __device__(int64_t n, int64_t j) { return __bfloat162float(p[n * out + j]); }, store);
  } else {
    const float* p = f32(op, dy);
    column_reduce<float>(op, N, out, [=] __device__(int64_t n, int64_t j) { return p[n * out + j]; }, store);
  }
}

}  // namespace

// y (N, out) = x (N, in) w (in, out) + b (out).
void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
  const char* op = "linear_forward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  float* py = f32(op, y);
  product(op, false, false, N, out, in, x, in, w, out, 0.f, py, out);
  if (b == nullptr) return;
  const float* pb = f32(op, *b);
  for_each(op, N * out, [=] __device__(int64_t i) { py[i] += pb[i % out]; });
}

// dx (N, in) += dy (N, out) w^T;  dw (in, out) += x^T dy;  db (out) += column sums of dy.
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_backward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  if (dx != nullptr) product(op, false, true, N, in, out, dy, out, w, out, 1.f, f32(op, *dx), in);
  if (dw != nullptr) product(op, true, false, in, out, N, x, in, dy, out, 1.f, f32(op, *dw), out);
  if (db != nullptr) add_column_sums(op, f32(op, *db), dy);
}

// y (N, out) = x (N, in) w^T, w stored (out, in).
void linear_transposed_forward(Tensor& y, const Tensor& x, const Tensor& w) {
  const char* op = "linear_transposed_forward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  product(op, false, true, N, out, in, x, in, w, in, 0.f, f32(op, y), out);
}

// dx (N, in) += dy (N, out) w;  dw (out, in) += dy^T x.
void linear_transposed_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_transposed_backward";
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  if (dx != nullptr) product(op, false, false, N, in, out, dy, out, w, in, 1.f, f32(op, *dx), in);
  if (dw != nullptr) product(op, true, false, out, in, N, dy, out, x, in, 1.f, f32(op, *dw), in);
}

}  // namespace moe::cuda
