// The check macros of the NCCL communicator: NCCL_CHECK for NCCL calls, NCCL_CUDA_CHECK for the CUDA
// runtime calls it makes. Private to parallel/nccl/ (and its tests): it includes nccl.h.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include "parallel/communicator.h"

namespace moe::detail {

// Throws CommError "file:line: <call> failed on rank R: <ncclGetErrorString(result)> (<ncclGetLastError>)",
// the last part when NCCL left a message. R is the rank in the communicator the call belongs to.
[[noreturn]] void throw_nccl_error(ncclResult_t result, const char* call, const char* file, int line, int rank);

// Throws CommError "file:line: <call> failed on rank R: <cudaGetErrorName>: <cudaGetErrorString>".
[[noreturn]] void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line, int rank);

}  // namespace moe::detail

// Wraps an NCCL call made for the communicator's rank `rank`: anything but ncclSuccess throws CommError.
#define NCCL_CHECK(rank, call)                                                          \
  do {                                                                                  \
    const ncclResult_t moe_nccl_rc_ = (call);                                           \
    if (moe_nccl_rc_ != ncclSuccess)                                                    \
      ::moe::detail::throw_nccl_error(moe_nccl_rc_, #call, __FILE__, __LINE__, (rank)); \
  } while (0)

// Wraps a CUDA runtime call the same way: anything but cudaSuccess throws CommError.
#define NCCL_CUDA_CHECK(rank, call)                                                     \
  do {                                                                                  \
    const cudaError_t moe_cuda_rc_ = (call);                                            \
    if (moe_cuda_rc_ != cudaSuccess)                                                    \
      ::moe::detail::throw_cuda_error(moe_cuda_rc_, #call, __FILE__, __LINE__, (rank)); \
  } while (0)
