// CPU linear layers through moe::gemm (row-major float32) or moe::gemm_bf16 (bfloat16 inputs, float32
// outputs): y = x w + b, and y = x w^T for a weight stored (out, in) such as a tied output head;
// forward and backward.
#include "core/backend.h"
#include "core/bfloat16.h"
#include "core/cpu/omp_threshold.h"
#include "core/cpu/product.h"

namespace moe::cpu {

void product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const Tensor& A, int64_t lda,
             const Tensor& B, int64_t ldb, float beta, float* C, int64_t ldc, Bf16Rows rows) {
  if (A.dtype() == DType::BF16)
    gemm_bf16(trans_a, trans_b, M, N, K, A.bf16(), lda, B.bf16(), ldb, beta, C, ldc, rows);
  else
    gemm(trans_a, trans_b, M, N, K, 1.f, A.f32(), lda, B.f32(), ldb, beta, C, ldc);
}

namespace {

// db (out) += column sums of dy (N, out), float32 or bfloat16, summed in float32.
void add_column_sums(float* db, const Tensor& dy) {
  const int64_t N = dy.dim(0), out = dy.dim(1);
  auto sum = [&](auto element) {
    for (int64_t n = 0; n < N; ++n)  // rows all add into the same db: not parallel over n
      for (int64_t j = 0; j < out; ++j) db[j] += element(n * out + j);
  };
  if (dy.dtype() == DType::BF16)
    sum([p = dy.bf16()](int64_t i) { return float_from_bf16(p[i]); });
  else
    sum([p = dy.f32()](int64_t i) { return p[i]; });
}

}  // namespace

// y (N, out) = x (N, in) w (in, out) + b (out).
void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  float* py = y.f32();
  product(false, false, N, out, in, x, in, w, out, 0.f, py, out);
  if (b == nullptr) return;
  const float* pb = b->f32();
#pragma omp parallel for if (N * out >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < out; ++j) py[n * out + j] += pb[j];
}

// dx (N, in) += dy (N, out) w^T;  dw (in, out) += x^T dy;  db (out) += column sums of dy.
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  if (dx != nullptr) product(false, true, N, in, out, dy, out, w, out, 1.f, dx->f32(), in);
  if (dw != nullptr) product(true, false, in, out, N, x, in, dy, out, 1.f, dw->f32(), out);
  if (db != nullptr) add_column_sums(db->f32(), dy);
}

// y (N, out) = x (N, in) w^T, w stored (out, in).
void linear_transposed_forward(Tensor& y, const Tensor& x, const Tensor& w) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  product(false, true, N, out, in, x, in, w, in, 0.f, y.f32(), out);
}

// dx (N, in) += dy (N, out) w;  dw (out, in) += dy^T x.
void linear_transposed_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  if (dx != nullptr) product(false, false, N, in, out, dy, out, w, in, 1.f, dx->f32(), in);
  if (dw != nullptr) product(true, false, out, in, N, dy, out, x, in, 1.f, dw->f32(), in);
}

}  // namespace moe::cpu
