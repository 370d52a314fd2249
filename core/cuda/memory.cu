// The CUDA backend's memory (core/backend_ops.inc): device allocations and copies, the device count,
// the CUDA check macro's error, and the per-device buffers the kernels reuse (core/cuda/launch.cuh).
#include <cstdio>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/check.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

void throw_cuda_error(const char* op, const char* call, const char* message, const char* file, int line) {
  throw CudaError(detail::concat(op, ": ", call, " failed at ", file, ":", line, ": ", message));
}

namespace {

// Why device_count() found no device, for the error of an allocation on it.
std::string& no_device_reason() {
  static std::string reason;
  return reason;
}

void require_device(const char* op) {
  MOE_REQUIRE(device_count() > 0, op, ": no CUDA device (", no_device_reason(), ")");
}

// The buffers of one device, grown on demand and never freed (they live as long as the process).
struct DeviceBuffers {
  void* scratch = nullptr;
  int64_t scratch_bytes = 0;
  void* reduction = nullptr;
};

DeviceBuffers& buffers_of_current_device(const char* op) {
  static std::mutex mutex;
  static std::vector<DeviceBuffers> buffers;
  int device = 0;
  MOE_CUDA_CHECK(op, cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  if (buffers.size() <= static_cast<size_t>(device)) buffers.resize(static_cast<size_t>(device) + 1);
  return buffers[static_cast<size_t>(device)];
}

}  // namespace

// Counted once: cudaGetDeviceCount's answer does not change while the process runs. A machine
// without a GPU or without a driver has no device: 0, not an error.
int device_count() {
  static const int count = [] {
    int n = 0;
    const cudaError_t status = cudaGetDeviceCount(&n);
    if (status == cudaSuccess && n > 0) return n;
    cudaGetLastError();  // clear the error so that it does not surface at a later, unrelated check
    no_device_reason() = status == cudaSuccess ? "cudaGetDeviceCount found none"
                                               : std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
    return 0;
  }();
  return count;
}

void synchronize() { MOE_CUDA_CHECK("synchronize", cudaDeviceSynchronize()); }

void use_device(int index) {
  require_device("use_device");
  MOE_REQUIRE(index >= 0 && index < device_count(), "use_device: GPU ", index, " does not exist; this process sees ",
              device_count(), " (0 to ", device_count() - 1, ")");
  MOE_CUDA_CHECK("use_device", cudaSetDevice(index));
}

void* allocate_bytes(int64_t bytes) {
  require_device("allocate_bytes");
  void* p = nullptr;
  // A zero-byte request still gets a distinct, valid pointer (cudaMalloc(0) returns null).
  const cudaError_t status = cudaMalloc(&p, static_cast<size_t>(bytes > 0 ? bytes : 1));
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw std::bad_alloc();
  }
  MOE_CUDA_CHECK("allocate_bytes", status);
  return p;  // cudaMalloc aligns to at least 256 bytes
}

// A deleter: must not throw. A failure here (the device already torn down at exit) is reported only.
void free_bytes(void* p) {
  const cudaError_t status = cudaFree(p);
  if (status != cudaSuccess && status != cudaErrorCudartUnloading)
    std::fprintf(stderr, "free_bytes: cudaFree failed: %s\n", cudaGetErrorString(status));
}

void copy_bytes(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0)
    MOE_CUDA_CHECK("copy_bytes", cudaMemcpy(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice));
}

void zero_bytes(void* dst, int64_t bytes) {
  if (bytes > 0) MOE_CUDA_CHECK("zero_bytes", cudaMemset(dst, 0, static_cast<size_t>(bytes)));
}

void fill_f32(float* dst, int64_t n, float value) {
  for_each("fill_f32", n, [=] __device__(int64_t i) { dst[i] = value; });
}

void copy_to_host(void* host_dst, const void* src, int64_t bytes) {
  if (bytes > 0)
    MOE_CUDA_CHECK("copy_to_host", cudaMemcpy(host_dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost));
}

void copy_from_host(void* dst, const void* host_src, int64_t bytes) {
  if (bytes > 0)
    MOE_CUDA_CHECK("copy_from_host", cudaMemcpy(dst, host_src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice));
}

void* scratch_buffer(const char* op, int64_t bytes) {
  DeviceBuffers& b = buffers_of_current_device(op);
  if (b.scratch_bytes < bytes) {
    if (b.scratch != nullptr) MOE_CUDA_CHECK(op, cudaFree(b.scratch));  // waits for the kernels using it
    b.scratch = nullptr;
    b.scratch_bytes = 0;
    MOE_CUDA_CHECK(op, cudaMalloc(&b.scratch, static_cast<size_t>(bytes)));
    b.scratch_bytes = bytes;
  }
  return b.scratch;
}

void* reduction_buffer(const char* op) {
  DeviceBuffers& b = buffers_of_current_device(op);
  if (b.reduction == nullptr) MOE_CUDA_CHECK(op, cudaMalloc(&b.reduction, (kMaxReduceBlocks + 1) * 16));
  return b.reduction;
}

}  // namespace moe::cuda
