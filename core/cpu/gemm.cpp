// CPU GEMM through oneDNN: float32 through dnnl_sgemm, measured fastest on this project's CPUs
// (docs/gemm-provider.md); bfloat16 inputs through cached matmul primitives (the C API has no bf16 gemm).
#include "core/cpu/gemm.h"

#include <dnnl.h>
#include <omp.h>
#include <xmmintrin.h>

#include <bit>
#include <cstdio>
#include <dnnl.hpp>
#include <map>
#include <string>
#include <tuple>

#include "core/check.h"

namespace moe {

namespace {

// C = beta * C for an empty product (K = 0), which oneDNN rejects.
void scale_only(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
}

std::string sizes(int64_t M, int64_t N, int64_t K) {
  return " for M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
}

// The memory descriptors of C (M, N) = op(A) op(B): row-major with row stride ld, a transposed operand
// being the same memory read with the strides swapped. M and K may be DNNL_RUNTIME_DIM_VAL (left open).
struct Bf16MatmulDescs {
  dnnl::memory::desc a, b, c;
};

Bf16MatmulDescs bf16_matmul_descs(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda,
                                  int64_t ldb, int64_t ldc) {
  using dims = dnnl::memory::dims;
  using dt = dnnl::memory::data_type;
  return {dnnl::memory::desc({M, K}, dt::bf16, trans_a ? dims{1, lda} : dims{lda, 1}),
          dnnl::memory::desc({K, N}, dt::bf16, trans_b ? dims{1, ldb} : dims{ldb, 1}),
          dnnl::memory::desc({M, N}, dt::f32, dims{ldc, 1})};
}

// A bfloat16 matmul primitive and, when its sizes are all fixed, its three memory objects, whose data
// handles each call sets (with M and K open, each call makes memory objects of its own sizes).
struct Bf16Matmul {
  dnnl::matmul primitive;
  std::string implementation;
  dnnl::memory a, b, c;
};

// What a primitive is specialised for: transposes, M, N, K (M and K DNNL_RUNTIME_DIM_VAL for
// Bf16Rows::Varying), lda, ldb, ldc, beta's bits, threads.
using Bf16MatmulKey = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t, int>;

const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

Bf16Matmul make_bf16_matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                            float beta, int64_t ldc) {
  const Bf16MatmulDescs md = bf16_matmul_descs(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  dnnl::primitive_attr attr;
  if (beta != 0.f) {  // C = product + beta * C: the sum post-op reads C before writing it
    dnnl::post_ops post_ops;
    post_ops.append_sum(beta);
    attr.set_post_ops(post_ops);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(md.a, md.b, md.c), attr, cpu_engine());
  Bf16Matmul m{dnnl::matmul(pd), pd.impl_info_str(), {}, {}, {}};
  if (M != DNNL_RUNTIME_DIM_VAL && K != DNNL_RUNTIME_DIM_VAL) {
    m.a = dnnl::memory(md.a, cpu_engine(), DNNL_MEMORY_NONE);
    m.b = dnnl::memory(md.b, cpu_engine(), DNNL_MEMORY_NONE);
    m.c = dnnl::memory(md.c, cpu_engine(), DNNL_MEMORY_NONE);
  }
  return m;
}

// The calling thread's primitive for this product, created on first use. Per thread, so no lock and no
// primitive or stream is ever shared between threads.
Bf16Matmul& cached_bf16_matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                               float beta, int64_t ldc, Bf16Rows rows) {
  thread_local std::map<Bf16MatmulKey, Bf16Matmul> cache;
  if (rows == Bf16Rows::Varying) M = K = DNNL_RUNTIME_DIM_VAL;
  const Bf16MatmulKey key{trans_a, trans_b, M, N, K, lda, ldb, ldc, std::bit_cast<uint32_t>(beta),
                          omp_get_max_threads()};
  auto it = cache.find(key);
  if (it == cache.end()) {
    if (cache.size() >= kMaxCachedBf16Matmuls) cache.clear();
    it = cache.emplace(key, make_bf16_matmul(trans_a, trans_b, M, N, K, lda, ldb, beta, ldc)).first;
  }
  return it->second;
}

// oneDNN 2.x has bf16 matmul kernels only for CPUs with AVX-512 (avx512_core): elsewhere creation fails.
[[noreturn]] void bf16_matmul_failed(const dnnl::error& e, int64_t M, int64_t N, int64_t K) {
  throw InternalError(std::string("oneDNN bf16 matmul failed (bfloat16 needs a CPU with AVX-512): ") + e.what() +
                      sizes(M, N, K));
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_only(M, N, beta, C, ldc);
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                ldb, beta, C, ldc);
  MOE_ASSERT(st == dnnl_success, "dnnl_sgemm failed with status " + std::to_string(st) + sizes(M, N, K));
}

void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
               const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc, Bf16Rows rows) {
  if (M == 0 || N == 0) return;
  if (K == 0) return scale_only(M, N, beta, C, ldc);
  thread_local dnnl::stream stream(cpu_engine());
  try {
    Bf16Matmul& m = cached_bf16_matmul(trans_a, trans_b, M, N, K, lda, ldb, beta, ldc, rows);
    auto* a = const_cast<uint16_t*>(A);
    auto* b = const_cast<uint16_t*>(B);
    if (rows == Bf16Rows::Varying) {  // memory objects of this call's sizes
      const Bf16MatmulDescs md = bf16_matmul_descs(trans_a, trans_b, M, N, K, lda, ldb, ldc);
      m.primitive.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(md.a, cpu_engine(), a)},
                                   {DNNL_ARG_WEIGHTS, dnnl::memory(md.b, cpu_engine(), b)},
                                   {DNNL_ARG_DST, dnnl::memory(md.c, cpu_engine(), C)}});
    } else {
      m.a.set_data_handle(a);
      m.b.set_data_handle(b);
      m.c.set_data_handle(C);
      m.primitive.execute(stream, {{DNNL_ARG_SRC, m.a}, {DNNL_ARG_WEIGHTS, m.b}, {DNNL_ARG_DST, m.c}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    bf16_matmul_failed(e, M, N, K);
  }
}

std::string gemm_bf16_implementation(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda,
                                     int64_t ldb, float beta, int64_t ldc, Bf16Rows rows) {
  try {
    return cached_bf16_matmul(trans_a, trans_b, M, N, K, lda, ldb, beta, ldc, rows).implementation;
  } catch (const dnnl::error& e) {
    bf16_matmul_failed(e, M, N, K);
  }
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

bool bf16_matmul_supported() {
  static const bool supported = [] {
    try {
      make_bf16_matmul(false, false, 16, 16, 16, 16, 16, 0.f, 16);
      return true;
    } catch (const dnnl::error&) {  // no bf16 kernel for this CPU (oneDNN 2.x: none without avx512_core)
      return false;
    }
  }();
  return supported;
}

}  // namespace moe
