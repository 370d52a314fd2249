// Matrix multiply on row-major float32 (and bfloat16-input) device matrices through cuBLAS
// (core/cpu/gemm.h's contract on the device), one cuBLAS handle per device, on the legacy default stream.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe::cuda {

// C (M, N) = alpha * op(A) op(B) + beta * C, all row-major device matrices; op(X) = X^T when trans_X.
// A is (M, K) or, transposed, stored (K, M); B is (K, N) or stored (N, K). lda/ldb/ldc are row strides.
// With beta = 0, C's previous contents are ignored. M, N or K may be 0. `op` names the caller in errors.
void gemm(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// C (M, N) float32 = op(A) op(B) + beta * C with A and B bfloat16 (raw bits), laid out as for gemm:
// cublasGemmEx with CUDA_R_16BF inputs, a CUDA_R_32F output and CUBLAS_COMPUTE_32F (float32 sums).
void gemm_bf16(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);

// `batch` such products in one call, matrix i of A, B and C at A + i * stride_a (and so on; strides in
// elements). A and B are float32 or bfloat16 (`inputs`, raw bits for bfloat16), C float32, the sums
// float32 (cublasGemmStridedBatchedEx; float32 inputs are not rounded to TF32).
void gemm_batched(const char* op, DType inputs, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const void* A, int64_t lda, int64_t stride_a, const void* B, int64_t ldb,
                  int64_t stride_b, float beta, float* C, int64_t ldc, int64_t stride_c, int64_t batch);

// One product of gemm()'s form for gemm_grouped: C (M, N) = alpha op(A) op(B) + beta C, its own sizes,
// row strides and device matrices.
struct GemmProblem {
  int64_t M, N, K;
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
};

// Every problem, with the same transpose flags, alpha and beta, in one cuBLAS call
// (cublasGemmGroupedBatchedEx, float32 computed in float32 as gemm does). A problem with an empty
// product is left out of the call: M or N = 0 writes nothing, K = 0 scales C by beta. The matrices'
// addresses reach the device in one asynchronous copy from a pinned host buffer the backend keeps
// per device; the call waits only for the previous call's copy out of that buffer.
void gemm_grouped(const char* op, bool trans_a, bool trans_b, float alpha, const std::vector<GemmProblem>& problems,
                  float beta);

}  // namespace moe::cuda
