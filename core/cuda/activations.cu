// CUDA activations, forward and backward: relu, gelu (tanh approximation), swiglu, sigmoid.
#include <cuda_bf16.h>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

__device__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

// The outputs of relu, gelu and swiglu (y, dx) are float32 or bfloat16, computed in float32 and rounded
// once (to nearest even, as the CPU): with_elements calls f with t's element pointer of its dtype.
__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ inline float load(const float* p) { return *p; }
__device__ inline float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <class F>
void with_elements(const char* op, Tensor& t, F f) {
  if (t.dtype() == DType::BF16) {
    f(reinterpret_cast<__nv_bfloat16*>(bf16(op, t)));
  } else {
    f(f32(op, t));
  }
}
}  // namespace

// ---- relu: x, y, dy, dx all the same shape ----

namespace {
template <class T>
void relu_forward_into(const char* op, T* py, const float* px, int64_t n) {
  for_each(op, n, [=] __device__(int64_t i) { store(py + i, px[i] > 0.f ? px[i] : 0.f); });
}
template <class T>
void relu_backward_into(const char* op, T* pdx, const float* pdy, const float* px, int64_t n) {
  for_each(op, n, [=] __device__(int64_t i) { store(pdx + i, load(pdx + i) + (px[i] > 0.f ? pdy[i] : 0.f)); });
}
}  // namespace

void relu_forward(Tensor& y, const Tensor& x) {
  const char* op = "relu_forward";
  const float* px = f32(op, x);
  with_elements(op, y, [&](auto* py) { relu_forward_into(op, py, px, x.numel()); });
}

void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "relu_backward";
  const float* px = f32(op, x);
  const float* pdy = f32(op, dy);
  with_elements(op, dx, [&](auto* pdx) { relu_backward_into(op, pdx, pdy, px, x.numel()); });
}

// ---- gelu: y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) ----

namespace {
template <class T>
void gelu_forward_into(const char* op, T* py, const float* px, int64_t n) {
  for_each(op, n, [=] __device__(int64_t i) {
    const float v = px[i];
    store(py + i, 0.5f * v * (1.f + tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v))));
  });
}

// dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
template <class T>
void gelu_backward_into(const char* op, T* pdx, const float* pdy, const float* px, int64_t n) {
  for_each(op, n, [=] __device__(int64_t i) {
    const float v = px[i];
    const float t = tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float du_dx = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
    store(pdx + i, load(pdx + i) + pdy[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * du_dx));
  });
}
}  // namespace

void gelu_forward(Tensor& y, const Tensor& x) {
  const char* op = "gelu_forward";
  const float* px = f32(op, x);
  with_elements(op, y, [&](auto* py) { gelu_forward_into(op, py, px, x.numel()); });
}

void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "gelu_backward";
  const float* px = f32(op, x);
  const float* pdy = f32(op, dy);
  with_elements(op, dx, [&](auto* pdx) { gelu_backward_into(op, pdx, pdy, px, x.numel()); });
}

// ---- swiglu: x (N, 2h) = [gate | up] per row, y (N, h) = silu(gate) * up ----

namespace {
template <class T>
void swiglu_forward_into(const char* op, T* py, const float* px, int64_t h, int64_t n) {
  for_each(op, n, [=] __device__(int64_t i) {
    const float* gate = px + (i / h) * 2 * h + i % h;
    store(py + i, gate[0] * sigmoid(gate[0]) * gate[h]);
  });
}

// d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g);  dgate += dy up silu'(g);  dup += dy silu(g).
template <class T>
void swiglu_backward_into(const char* op, T* pdx, const float* pdy, const float* px, int64_t h, int64_t n) {
  for_each(op, n, [=] __device__(int64_t i) {
    const int64_t at = (i / h) * 2 * h + i % h;  // the gate's column; the up's is h further
    const float g = px[at], s = sigmoid(g);
    store(pdx + at, load(pdx + at) + pdy[i] * px[at + h] * s * (1.f + g * (1.f - s)));
    store(pdx + at + h, load(pdx + at + h) + pdy[i] * g * s);
  });
}
}  // namespace

void swiglu_forward(Tensor& y, const Tensor& x) {
  const char* op = "swiglu_forward";
  const float* px = f32(op, x);
  with_elements(op, y, [&](auto* py) { swiglu_forward_into(op, py, px, x.dim(1) / 2, y.numel()); });
}

void swiglu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "swiglu_backward";
  const float* px = f32(op, x);
  const float* pdy = f32(op, dy);
  with_elements(op, dx, [&](auto* pdx) { swiglu_backward_into(op, pdx, pdy, px, x.dim(1) / 2, dy.numel()); });
}

// ---- sigmoid: y = 1 / (1 + exp(-x)) ----

void sigmoid_forward(Tensor& y, const Tensor& x) {
  const char* op = "sigmoid_forward";
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, x.numel(), [=] __device__(int64_t i) { py[i] = sigmoid(px[i]); });
}

void sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  const char* op = "sigmoid_backward";
  const float* py = f32(op, y);
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each(op, y.numel(), [=] __device__(int64_t i) { pdx[i] += pdy[i] * py[i] * (1.f - py[i]); });
}

}  // namespace moe::cuda
