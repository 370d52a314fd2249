// CPU GEMM through oneDNN's dnnl_sgemm: measured fastest on this project's CPUs (docs/gemm-provider.md).
#include "core/cpu/gemm.h"

#include <dnnl.h>
#include <omp.h>
#include <xmmintrin.h>

#include <cstdio>
#include <string>

#include "core/check.h"

namespace moe {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // oneDNN rejects K = 0; the product is empty, so C = beta * C.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                ldb, beta, C, ldc);
  MOE_ASSERT(st == dnnl_success, "dnnl_sgemm failed with status " + std::to_string(st) + " for M=" +
                                     std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
}

void set_num_threads(int n) {
  MOE_REQUIRE(n >= 1, "thread count ", n, " must be >= 1");
  omp_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

void flush_denormals_to_zero() {
  // MXCSR bit 15: flush-to-zero (results); bit 6: denormals-are-zero (inputs).
  _mm_setcsr(_mm_getcsr() | 0x8040);
}

const char* gemm_provider() {
  static const std::string name = [] {
    const dnnl_version_t* v = dnnl_version();
    char buf[64];
    std::snprintf(buf, sizeof buf, "oneDNN %d.%d.%d", v->major, v->minor, v->patch);
    return std::string(buf);
  }();
  return name.c_str();
}

}  // namespace moe
