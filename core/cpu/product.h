// The matrix product the CPU linear ops share: float32 through moe::gemm, bfloat16 inputs through
// moe::gemm_bf16, on tensors (or row views of them).
#pragma once

#include <cstdint>

#include "core/cpu/gemm.h"
#include "core/tensor.h"

namespace moe::cpu {

// C (M, N) float32 = op(A) op(B) + beta * C, laid out as for moe::gemm, with A and B both float32 or both
// bfloat16 (the op front-ends check that they share a dtype); `rows` picks gemm_bf16's primitive kind.
void product(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const Tensor& A, int64_t lda,
             const Tensor& B, int64_t ldb, float beta, float* C, int64_t ldc, Bf16Rows rows = Bf16Rows::Fixed);

}  // namespace moe::cpu
