// Failures of CUDA runtime and cuBLAS calls: one check macro per library that throws CudaError naming
// the op, the call, file:line and the library's message.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace moe::cuda {

// A CUDA runtime or cuBLAS call failed (a device fault, out of memory inside a library, a bad launch).
class CudaError : public std::runtime_error {
 public:
  explicit CudaError(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] void throw_cuda_error(const char* op, const char* call, const char* message, const char* file, int line);

}  // namespace moe::cuda

// MOE_CUDA_CHECK("gather_rows", cudaMemcpy(...)): throws CudaError unless the call returns cudaSuccess.
#define MOE_CUDA_CHECK(op, call)                                                                       \
  do {                                                                                                 \
    const cudaError_t moe_cuda_status_ = (call);                                                       \
    if (moe_cuda_status_ != cudaSuccess)                                                               \
      ::moe::cuda::throw_cuda_error(op, #call, cudaGetErrorString(moe_cuda_status_), __FILE__, __LINE__); \
  } while (0)

// The same for cuBLAS calls.
#define MOE_CUBLAS_CHECK(op, call)                                                                          \
  do {                                                                                                      \
    const cublasStatus_t moe_cublas_status_ = (call);                                                       \
    if (moe_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                                        \
      ::moe::cuda::throw_cuda_error(op, #call, cublasGetStatusString(moe_cublas_status_), __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad configuration shows up here (a fault inside the kernel surfaces at the
// next synchronising call, which is checked too).
#define MOE_CUDA_CHECK_LAUNCH(op) MOE_CUDA_CHECK(op, cudaGetLastError())
