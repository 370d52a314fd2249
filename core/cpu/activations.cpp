// CPU activations, forward and backward: relu, gelu (tanh approximation), swiglu, sigmoid.
#include <cmath>

#include "core/backend.h"
#include "core/bfloat16.h"
#include "core/cpu/fast_math.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

float sigmoid(float v) { return fast_sigmoid(v); }

// The outputs of relu, gelu and swiglu (y, dx) are float32 or bfloat16, computed in float32 and rounded
// once: with_elements calls f with t's element pointer, float* or uint16_t* (bfloat16 bits).
inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = bf16_from_float(v); }
inline float load(const float* p) { return *p; }
inline float load(const uint16_t* p) { return float_from_bf16(*p); }

template <class F>
void with_elements(Tensor& t, F f) {
  if (t.dtype() == DType::BF16) {
    f(t.bf16());
  } else {
    f(t.f32());
  }
}
}  // namespace

// ---- relu: x, y, dy, dx all the same shape ----

void relu_forward(Tensor& y, const Tensor& x) {
  const float* px = x.f32();
  const int64_t n = x.numel();
  with_elements(y, [&](auto* py) {
#pragma omp parallel for if (n >= kMinParallelElements)
    for (int64_t i = 0; i < n; ++i) store(py + i, px[i] > 0.f ? px[i] : 0.f);
  });
}

void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const float* px = x.f32();
  const float* pdy = dy.f32();
  const int64_t n = x.numel();
  with_elements(dx, [&](auto* pdx) {
#pragma omp parallel for if (n >= kMinParallelElements)
    for (int64_t i = 0; i < n; ++i) store(pdx + i, load(pdx + i) + (px[i] > 0.f ? pdy[i] : 0.f));
  });
}

// ---- gelu: y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) ----

void gelu_forward(Tensor& y, const Tensor& x) {
  const float* px = x.f32();
  const int64_t n = x.numel();
  with_elements(y, [&](auto* py) {
#pragma omp parallel for if (n >= kMinParallelElements)
    for (int64_t i = 0; i < n; ++i) {
      const float v = px[i];
      const float u = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
      store(py + i, 0.5f * v * (1.f + fast_tanh(u)));
    }
  });
}

// dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const float* px = x.f32();
  const float* pdy = dy.f32();
  const int64_t n = x.numel();
  with_elements(dx, [&](auto* pdx) {
#pragma omp parallel for if (n >= kMinParallelElements)
    for (int64_t i = 0; i < n; ++i) {
      const float v = px[i];
      const float t = fast_tanh(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
      const float du_dx = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
      const float dy_dx = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * du_dx;
      store(pdx + i, load(pdx + i) + pdy[i] * dy_dx);
    }
  });
}

// ---- swiglu: x (N, 2h) = [gate | up] per row, y (N, h) = silu(gate) * up ----

void swiglu_forward(Tensor& y, const Tensor& x) {
  const int64_t N = x.dim(0), h = x.dim(1) / 2;
  const float* px = x.f32();
  with_elements(y, [&](auto* py) {
#pragma omp parallel for if (N * 2 * h >= kMinParallelElements)
    for (int64_t n = 0; n < N; ++n) {
      const float* gate = px + n * 2 * h;
      const float* up = gate + h;
      auto* yrow = py + n * h;
      for (int64_t j = 0; j < h; ++j) store(yrow + j, gate[j] * sigmoid(gate[j]) * up[j]);
    }
  });
}

// d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g);  dgate += dy up silu'(g);  dup += dy silu(g).
void swiglu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const int64_t N = x.dim(0), h = x.dim(1) / 2;
  const float* px = x.f32();
  const float* pdy = dy.f32();
  with_elements(dx, [&](auto* pdx) {
#pragma omp parallel for if (N * 2 * h >= kMinParallelElements)
    for (int64_t n = 0; n < N; ++n) {
      const float* gate = px + n * 2 * h;
      const float* up = gate + h;
      const float* dyrow = pdy + n * h;
      auto* dgate = pdx + n * 2 * h;
      auto* dup = dgate + h;
      for (int64_t j = 0; j < h; ++j) {
        const float s = sigmoid(gate[j]);
        const float silu = gate[j] * s;
        store(dgate + j, load(dgate + j) + dyrow[j] * up[j] * s * (1.f + gate[j] * (1.f - s)));
        store(dup + j, load(dup + j) + dyrow[j] * silu);
      }
    }
  });
}

// ---- sigmoid: y = 1 / (1 + exp(-x)); the precise std::exp, not fast_sigmoid (router scores) ----

void sigmoid_forward(Tensor& y, const Tensor& x) {
  const float* px = x.f32();
  float* py = y.f32();
  const int64_t n = x.numel();
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) py[i] = 1.f / (1.f + std::exp(-px[i]));
}

void sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  const float* py = y.f32();
  const float* pdy = dy.f32();
  float* pdx = dx.f32();
  const int64_t n = y.numel();
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) pdx[i] += pdy[i] * py[i] * (1.f - py[i]);
}

}  // namespace moe::cpu
