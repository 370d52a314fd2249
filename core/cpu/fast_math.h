// Branch-free float32 exp and tanh that the compiler vectorises (libm's calls stay scalar), for the
// activation loops, which otherwise cost a sizeable share of an expert FFN next to its GEMMs.
#pragma once

#include <bit>
#include <cstdint>

namespace moe::cpu {

// exp(x) with relative error below 2e-7 on [-87, 88]; inputs outside are clamped (so exp(-inf)
// gives about 1e-38, not 0, and NaN propagates through the polynomial).
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in two
  // parts so n * ln2_hi is exact).
  // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits (a plain add, unlike
  // rounding builtins, vectorises); subtracting it back gives n as a float.
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  // Degree-6 Taylor-like minimax polynomial for exp(r) on that interval.
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (std::bit_cast<int32_t>(shifted) - 0x4B400000 + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): absolute error below 3e-7.
inline float fast_tanh(float x) { return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f); }

// 1 / (1 + exp(-x)).
inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

}  // namespace moe::cpu
