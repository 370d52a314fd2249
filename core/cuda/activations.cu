// CUDA activations, forward and backward: relu, gelu (tanh approximation), swiglu, sigmoid.
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

__device__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }
}  // namespace

// ---- relu: x, y, dy, dx all the same shape ----

void relu_forward(Tensor& y, const Tensor& x) {
  const char* op = "relu_forward";
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, x.numel(), [=] __device__(int64_t i) { py[i] = px[i] > 0.f ? px[i] : 0.f; });
}

void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "relu_backward";
  const float* px = f32(op, x);
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each(op, x.numel(), [=] __device__(int64_t i) { pdx[i] += px[i] > 0.f ? pdy[i] : 0.f; });
}

// ---- gelu: y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3) ----

void gelu_forward(Tensor& y, const Tensor& x) {
  const char* op = "gelu_forward";
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, x.numel(), [=] __device__(int64_t i) {
    const float v = px[i];
    py[i] = 0.5f * v * (1.f + tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v)));
  });
}

// dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "gelu_backward";
  const float* px = f32(op, x);
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each(op, x.numel(), [=] __device__(int64_t i) {
    const float v = px[i];
    const float t = tanhf(kSqrt2OverPi * (v + kGeluCubic * v * v * v));
    const float du_dx = kSqrt2OverPi * (1.f + 3.f * kGeluCubic * v * v);
    pdx[i] += pdy[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * du_dx);
  });
}

// ---- swiglu: x (N, 2h) = [gate | up] per row, y (N, h) = silu(gate) * up ----

void swiglu_forward(Tensor& y, const Tensor& x) {
  const char* op = "swiglu_forward";
  const int64_t h = x.dim(1) / 2;
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, y.numel(), [=] __device__(int64_t i) {
    const float* gate = px + (i / h) * 2 * h + i % h;
    py[i] = gate[0] * sigmoid(gate[0]) * gate[h];
  });
}

// d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g);  dgate += dy up silu'(g);  dup += dy silu(g).
void swiglu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "swiglu_backward";
  const int64_t h = x.dim(1) / 2;
  const float* px = f32(op, x);
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each(op, dy.numel(), [=] __device__(int64_t i) {
    const int64_t at = (i / h) * 2 * h + i % h;  // the gate's column; the up's is h further
    const float g = px[at], s = sigmoid(g);
    pdx[at] += pdy[i] * px[at + h] * s * (1.f + g * (1.f - s));
    pdx[at + h] += pdy[i] * g * s;
  });
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
