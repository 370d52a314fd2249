// Row-major GEMMs through cuBLAS (column-major): a row-major C = op(A) op(B) is the column-major
// C^T = op(B)^T op(A)^T, and a row-major matrix read column-major is its transpose, so cuBLAS gets B
// and A swapped, each with its own transpose flag, and N and M swapped.
#include "core/cuda/gemm.h"

#include <climits>
#include <mutex>
#include <vector>

#include "core/check.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

namespace {

// The handle of the current device, created on first use and kept for the process (destroying it at
// exit could run after the CUDA runtime is gone). Its stream is the legacy default stream.
cublasHandle_t handle(const char* op) {
  static std::mutex mutex;
  static std::vector<cublasHandle_t> handles;
  int device = 0;
  MOE_CUDA_CHECK(op, cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (handles.size() <= static_cast<size_t>(device)) handles.resize(static_cast<size_t>(device) + 1, nullptr);
  cublasHandle_t& h = handles[static_cast<size_t>(device)];
  if (h == nullptr) {
    MOE_CUBLAS_CHECK(op, cublasCreate(&h));
    // float32 products in float32: the default math mode, which rounds no input to TF32 (the CPU does not).
    MOE_CUBLAS_CHECK(op, cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
  }
  return h;
}

int as_int(const char* op, int64_t v) {
  MOE_REQUIRE(v >= 0 && v <= INT_MAX, op, ": a matrix dimension or stride of ", v, " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

// C = beta * C for an empty product (K = 0), which cuBLAS's leading-dimension checks may refuse.
void scale_only(const char* op, int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for_each(op, M * N, [=] __device__(int64_t i) {
    float* c = C + (i / N) * ldc + i % N;
    *c = beta == 0.f ? 0.f : beta * *c;
  });
}

}  // namespace

void gemm(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_batched(op, trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

void gemm_bf16(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_only(op, M, N, beta, C, ldc);
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const float alpha = 1.f;
  MOE_CUBLAS_CHECK(op, cublasGemmEx(handle(op), op_b, op_a, as_int(op, N), as_int(op, M), as_int(op, K), &alpha, B,
                                    CUDA_R_16BF, as_int(op, ldb), A, CUDA_R_16BF, as_int(op, lda), &beta, C,
                                    CUDA_R_32F, as_int(op, ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_batched(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b,
                  float beta, float* C, int64_t ldc, int64_t stride_c, int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < batch; ++i) scale_only(op, M, N, beta, C + i * stride_c, ldc);
    return;
  }
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  MOE_CUBLAS_CHECK(op, cublasSgemmStridedBatched(handle(op), op_b, op_a, as_int(op, N), as_int(op, M), as_int(op, K),
                                                 &alpha, B, as_int(op, ldb), stride_b, A, as_int(op, lda), stride_a,
                                                 &beta, C, as_int(op, ldc), stride_c, as_int(op, batch)));
}

}  // namespace moe::cuda
