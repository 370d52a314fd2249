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

// gemm_grouped's matrix addresses on their way to the device: a pinned host buffer and a device buffer
// of `capacity` addresses each, grown on demand and kept for the process. The host buffer is rewritten
// only once the previous copy out of it has completed (`copied`); the device buffer is overwritten by a
// copy on the stream of the GEMMs that read it, so only after they have run.
struct GroupedAddresses {
  void** host = nullptr;
  void** device = nullptr;
  int64_t capacity = 0;
  cudaEvent_t copied = nullptr;
};

// The current device's buffers, ready to take `count` addresses in `host`.
GroupedAddresses& grouped_addresses(const char* op, int64_t count) {
  static std::mutex mutex;
  static std::vector<GroupedAddresses> per_device;
  int device = 0;
  MOE_CUDA_CHECK(op, cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (per_device.size() <= static_cast<size_t>(device)) per_device.resize(static_cast<size_t>(device) + 1);
  GroupedAddresses& a = per_device[static_cast<size_t>(device)];
  if (a.copied == nullptr) MOE_CUDA_CHECK(op, cudaEventCreateWithFlags(&a.copied, cudaEventDisableTiming));
  MOE_CUDA_CHECK(op, cudaEventSynchronize(a.copied));  // an event never recorded is complete
  if (a.capacity < count) {
    if (a.host != nullptr) MOE_CUDA_CHECK(op, cudaFreeHost(a.host));
    if (a.device != nullptr) MOE_CUDA_CHECK(op, cudaFree(a.device));  // waits for the GEMMs reading it
    a.host = a.device = nullptr;
    a.capacity = 0;
    const size_t bytes = static_cast<size_t>(count) * sizeof(void*);
    MOE_CUDA_CHECK(op, cudaMallocHost(reinterpret_cast<void**>(&a.host), bytes));
    MOE_CUDA_CHECK(op, cudaMalloc(reinterpret_cast<void**>(&a.device), bytes));
    a.capacity = count;
  }
  return a;
}

}  // namespace

void gemm(const char* op, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_batched(op, DType::F32, trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
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

void gemm_batched(const char* op, DType inputs, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const void* A, int64_t lda, int64_t stride_a, const void* B, int64_t ldb,
                  int64_t stride_b, float beta, float* C, int64_t ldc, int64_t stride_c, int64_t batch) {
  MOE_REQUIRE(inputs == DType::F32 || inputs == DType::BF16, op, ": gemm_batched takes float32 or bfloat16 inputs, not ",
              to_string(inputs));
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < batch; ++i) scale_only(op, M, N, beta, C + i * stride_c, ldc);
    return;
  }
  const cudaDataType type = inputs == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  MOE_CUBLAS_CHECK(op, cublasGemmStridedBatchedEx(handle(op), op_b, op_a, as_int(op, N), as_int(op, M), as_int(op, K),
                                                  &alpha, B, type, as_int(op, ldb), stride_b, A, type, as_int(op, lda),
                                                  stride_a, &beta, C, CUDA_R_32F, as_int(op, ldc), stride_c,
                                                  as_int(op, batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_grouped(const char* op, bool trans_a, bool trans_b, float alpha, const std::vector<GemmProblem>& problems,
                  float beta) {
  std::vector<const GemmProblem*> run;  // the problems with a product to compute
  for (const GemmProblem& p : problems) {
    if (p.M == 0 || p.N == 0) continue;
    if (p.K == 0) {
      if (beta != 1.f) scale_only(op, p.M, p.N, beta, p.C, p.ldc);
      continue;
    }
    run.push_back(&p);
  }
  if (run.empty()) return;
  // Each problem is a cuBLAS group of one (their sizes differ), swapped for column-major as in
  // gemm_batched: cuBLAS's A is our B, its m our N. The addresses go B, then A, then C, `count` each.
  const int count = as_int(op, static_cast<int64_t>(run.size()));
  std::vector<int> m(count), n(count), k(count), lda(count), ldb(count), ldc(count);
  GroupedAddresses& addresses = grouped_addresses(op, 3 * int64_t{count});
  for (int i = 0; i < count; ++i) {
    const GemmProblem& p = *run[static_cast<size_t>(i)];
    m[i] = as_int(op, p.N), n[i] = as_int(op, p.M), k[i] = as_int(op, p.K);
    lda[i] = as_int(op, p.ldb), ldb[i] = as_int(op, p.lda), ldc[i] = as_int(op, p.ldc);
    addresses.host[i] = const_cast<float*>(p.B);  // read only, as cuBLAS's const array type says
    addresses.host[count + i] = const_cast<float*>(p.A);
    addresses.host[2 * count + i] = p.C;
  }
  MOE_CUDA_CHECK(op, cudaMemcpyAsync(addresses.device, addresses.host, 3 * static_cast<size_t>(count) * sizeof(void*),
                                     cudaMemcpyHostToDevice, 0));
  MOE_CUDA_CHECK(op, cudaEventRecord(addresses.copied, 0));
  const std::vector<cublasOperation_t> cublas_trans_a(count, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N),
      cublas_trans_b(count, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  const std::vector<float> alphas(count, alpha), betas(count, beta);
  const std::vector<int> group_size(count, 1);
  void** const d = addresses.device;
  MOE_CUBLAS_CHECK(op, cublasGemmGroupedBatchedEx(handle(op), cublas_trans_a.data(), cublas_trans_b.data(), m.data(),
                                                  n.data(), k.data(), alphas.data(), d, CUDA_R_32F, lda.data(),
                                                  d + count, CUDA_R_32F, ldb.data(), betas.data(), d + 2 * count,
                                                  CUDA_R_32F, ldc.data(), count, group_size.data(), CUBLAS_COMPUTE_32F));
}

}  // namespace moe::cuda
