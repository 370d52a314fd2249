// Counter-based random numbers: value i of stream s depends only on (s, i), so every rank can
// generate exactly the slice it owns (an expert by its global id, a token by its global index).
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "core/tensor.h"

// The generator runs on the host and, compiled by nvcc, in CUDA kernels (the router's jitter), with
// the same bits on both.
#ifdef __CUDACC__
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

// SplitMix64 finaliser: a strong 64-bit mix, used as a hash of (stream, counter).
MOE_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Stream id for a named use of a seed ("layer0.w_gate"), stable across runs and platforms (FNV-1a).
inline uint64_t stream_id(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return mix64(seed ^ h);
}

// Uniform in [0, 1) with 24 random bits (exactly representable in float32).
MOE_HOST_DEVICE inline float uniform01(uint64_t stream, uint64_t counter) {
  return static_cast<float>(mix64(stream ^ mix64(counter)) >> 40) * (1.0f / 16777216.0f);
}

// Standard normal by Box-Muller from two uniforms of the same counter.
inline float standard_normal(uint64_t stream, uint64_t counter) {
  uint64_t bits = mix64(stream ^ mix64(counter));
  double u1 = (static_cast<double>(bits >> 40) + 1.0) / 16777217.0;  // (0, 1]: log is finite
  double u2 = static_cast<double>(bits & 0xFFFFFFull) / 16777216.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

// t[i] = std * N(0,1) of counter (offset + i). CPU tensors only.
void fill_normal(Tensor& t, float std, uint64_t stream, uint64_t offset = 0);
// A new `shape` tensor on `device` holding what fill_normal writes: drawn on the host, so a weight
// starts with the same values on every device.
Tensor random_normal(const Shape& shape, float std, uint64_t stream, Device device, uint64_t offset = 0);
// t[i] = lo + (hi - lo) * U[0,1) of counter (offset + i).
void fill_uniform(Tensor& t, float lo, float hi, uint64_t stream, uint64_t offset = 0);

}  // namespace moe
