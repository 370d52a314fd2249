// Matrix multiply on row-major float32 and bfloat16 matrices through the CPU GEMM provider (oneDNN),
// and the process settings that go with it: the thread count and flushing denormals to zero.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

// C (M, N) = alpha * op(A) op(B) + beta * C, all row-major; op(X) = X^T when trans_X.
// A is (M, K) or, transposed, stored (K, M); B is (K, N) or stored (N, K). lda/ldb/ldc are row strides.
// With beta = 0, C's previous contents are ignored (may be uninitialised). M, N or K may be 0.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// C (M, N) = op(A) op(B) + beta * C with A and B bfloat16 (raw bits, core/bfloat16.h) and C float32,
// laid out as for gemm. Each product of two bfloat16 values is exact in float32 and the sums are
// float32 (oneDNN's matmul primitive; brg:avx512_core_bf16 on CPUs with avx512_bf16). The primitive
// for each (transposes, sizes, strides, beta, thread count) is created on first use and kept in a
// cache of the calling thread (at most kMaxCachedBf16Matmuls, emptied when full), so repeated shapes
// pay its creation once. With beta = 0, C's previous contents are ignored. M, N or K may be 0.
//
// Bf16Rows::Varying is for products whose M and K change from call to call while everything else stays
// (the experts' row counts, grouped_linear): the primitive leaves M and K open (oneDNN's runtime
// dimensions, implementation gemm:jit), so one primitive per (transposes, N, strides, beta, threads)
// serves every row count and a new count creates nothing. An exact primitive costs 0.2-0.5 ms to create,
// and an expert's row count is new almost every step; measured on avx512_bf16 (docs/gemm-provider.md),
// the open primitive runs at the exact one's rate.
enum class Bf16Rows { Fixed, Varying };
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
               const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc, Bf16Rows rows = Bf16Rows::Fixed);
inline constexpr int kMaxCachedBf16Matmuls = 256;

// The oneDNN implementation gemm_bf16 runs for that product ("brg:avx512_core_bf16", "gemm:jit"), for
// benchmarks and logs. Creates the primitive (cached as gemm_bf16 does).
std::string gemm_bf16_implementation(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda,
                                     int64_t ldb, float beta, int64_t ldc, Bf16Rows rows = Bf16Rows::Fixed);

// Threads the GEMM provider (and our OpenMP loops) may use in this process. n >= 1.
void set_num_threads(int n);
int num_threads();

// Makes this thread (and threads it creates afterwards, which inherit the setting) flush denormal
// float results and inputs to zero. Denormals, which appear as weights and gradients shrink during
// training, are up to 100x slower on x86; zero loses nothing that float32 training needs.
void flush_denormals_to_zero();

// Name of the GEMM provider, for logs and benchmarks ("oneDNN 2.6.3").
const char* gemm_provider();

// Whether gemm_bf16 runs on this CPU: creates one small bfloat16 matmul primitive on the first call
// (oneDNN 2.x has bfloat16 matmul kernels only for CPUs with AVX-512, avx512_core; ONEDNN_MAX_CPU_ISA
// below that turns them off) and answers the same afterwards. Thread-safe.
bool bf16_matmul_supported();

}  // namespace moe
