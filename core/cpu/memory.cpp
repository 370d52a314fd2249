// The CPU backend's memory: aligned host allocations and plain copies (core/backend_ops.inc).
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/backend.h"
#include "core/check.h"

namespace moe::cpu {

namespace {
constexpr size_t kAlignment = 64;  // one cache line, and what AVX-512 loads prefer
}  // namespace

int device_count() { return 1; }

void synchronize() {}

void use_device(int index) { MOE_REQUIRE(index == 0, "use_device: the CPU backend has one device, 0, not ", index); }

void* allocate_bytes(int64_t bytes) {
  size_t n = (static_cast<size_t>(bytes) + kAlignment - 1) / kAlignment * kAlignment;
  if (n == 0) n = kAlignment;  // keep every defined tensor's pointer non-null
  void* p = std::aligned_alloc(kAlignment, n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void free_bytes(void* p) { std::free(p); }

void copy_bytes(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
}

void zero_bytes(void* dst, int64_t bytes) {
  if (bytes > 0) std::memset(dst, 0, static_cast<size_t>(bytes));
}

void fill_f32(float* dst, int64_t n, float value) {
  for (int64_t i = 0; i < n; ++i) dst[i] = value;
}

// The host is this backend's device.
void copy_to_host(void* host_dst, const void* src, int64_t bytes) { copy_bytes(host_dst, src, bytes); }
void copy_from_host(void* dst, const void* host_src, int64_t bytes) { copy_bytes(dst, host_src, bytes); }

}  // namespace moe::cpu
