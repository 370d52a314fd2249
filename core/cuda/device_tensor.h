// Device addresses of a CUDA tensor's elements, for the kernels (Tensor's f32(), bf16() and i32() are
// host pointers). The CUDA kernels compute in float32: f32() refuses a bfloat16 tensor naming the op;
// bf16() serves the conversions and the linear layers' bfloat16 products.
#pragma once

#include <cstdint>

#include "core/check.h"
#include "core/tensor.h"

namespace moe::cuda {

inline void require_float32(const char* op, const Tensor& t) {
  MOE_REQUIRE(t.dtype() == DType::F32, op, ": the CUDA kernels compute in float32 only; got a ", to_string(t.dtype()),
              " tensor ", to_string(t.shape()));
  MOE_ASSERT(t.device() == Device::CUDA, "a CUDA op's tensors are on the CUDA device");
}

inline const float* f32(const char* op, const Tensor& t) {
  require_float32(op, t);
  return static_cast<const float*>(t.data());
}
inline float* f32(const char* op, Tensor& t) {
  require_float32(op, t);
  return static_cast<float*>(t.data());
}
// A bfloat16 tensor's raw 16-bit elements (cuda_bf16.h's __nv_bfloat16 in kernels).
inline const uint16_t* bf16(const char* op, const Tensor& t) {
  MOE_ASSERT(t.dtype() == DType::BF16 && t.device() == Device::CUDA, "a bfloat16 tensor on the CUDA device");
  return static_cast<const uint16_t*>(t.data());
}
inline uint16_t* bf16(const char* op, Tensor& t) {
  MOE_ASSERT(t.dtype() == DType::BF16 && t.device() == Device::CUDA, "a bfloat16 tensor on the CUDA device");
  return static_cast<uint16_t*>(t.data());
}
inline const int32_t* i32(const char* op, const Tensor& t) {
  MOE_ASSERT(t.dtype() == DType::I32 && t.device() == Device::CUDA, "an index tensor is int32 on the CUDA device");
  return static_cast<const int32_t*>(t.data());
}
inline int32_t* i32(const char* op, Tensor& t) {
  MOE_ASSERT(t.dtype() == DType::I32 && t.device() == Device::CUDA, "an index tensor is int32 on the CUDA device");
  return static_cast<int32_t*>(t.data());
}

}  // namespace moe::cuda
