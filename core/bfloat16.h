// bfloat16 <-> float32 on the host, as raw 16-bit patterns (the top half of a float32): the one
// definition of the rounding the CPU backend's conversions use and the tests check against.
#pragma once

#include <cstdint>
#include <cstring>

namespace moe {

// float32 -> bfloat16, rounding to nearest with ties to even; a NaN stays a NaN (quiet, sign kept),
// infinities stay infinite, and a value beyond bfloat16's largest finite (0x7f7f, ~3.39e38) by half an
// ulp or more rounds to infinity, as IEEE rounding does.
inline uint16_t bf16_from_float(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  // Branch-free so that loops over it vectorise: a NaN would round its payload away (maybe to infinity).
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// bfloat16 -> float32, exact (every bfloat16 value is a float32 value).
inline float float_from_bf16(uint16_t h) {
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace moe
