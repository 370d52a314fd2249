// CUDA kernels of the optimizer step: AdamW and SGD updates, the sum of squares for the gradient norm,
// the scaling that clips (and averages) gradients, and the aux-free routing bias step.
#include <vector>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

// w, m, v, g: n elements; updated in place (core/optim_ops.h).
void adamw_update(Tensor& w, Tensor& m, Tensor& v, const Tensor& g, const AdamWScalars& s) {
  const char* op = "adamw_update";
  float* pw = f32(op, w);
  float* pm = f32(op, m);
  float* pv = f32(op, v);
  const float* pg = f32(op, g);
  const float b1 = s.beta1, b2 = s.beta2, c1 = s.bias_correction1, c2 = s.bias_correction2;
  const float lr = s.lr, eps = s.eps, wd = s.weight_decay;
  for_each(op, w.numel(), [=] __device__(int64_t j) {
    const float mj = b1 * pm[j] + (1.f - b1) * pg[j];
    const float vj = b2 * pv[j] + (1.f - b2) * pg[j] * pg[j];
    pm[j] = mj;
    pv[j] = vj;
    pw[j] -= lr * ((mj / c1) / (sqrtf(vj / c2) + eps) + wd * pw[j]);
  });
}

// w, buf, g: n elements; updated in place.
void sgd_update(Tensor& w, Tensor& buf, const Tensor& g, float lr, float momentum, float weight_decay) {
  const char* op = "sgd_update";
  float* pw = f32(op, w);
  float* pb = f32(op, buf);
  const float* pg = f32(op, g);
  for_each(op, w.numel(), [=] __device__(int64_t j) {
    const float bj = momentum * pb[j] + pg[j];
    pb[j] = bj;
    pw[j] -= lr * (bj + weight_decay * pw[j]);
  });
}

// sum of x_i^2 in double, on the device (a fixed reduction tree: the same bits on every call), then
// one copy to the host.
double sum_of_squares(const Tensor& x) {
  const char* op = "sum_of_squares";
  const float* p = f32(op, x);
  return reduce_to_host(op, x.numel(), 0.0, [=] __device__(int64_t i) {
    return static_cast<double>(p[i]) * p[i];
  }, Add{});
}

// x_i = float(x_i * factor), the product in double.
void scale_in_place(Tensor& x, double factor) {
  const char* op = "scale_in_place";
  float* p = f32(op, x);
  for_each(op, x.numel(), [=] __device__(int64_t i) { p[i] = static_cast<float>(p[i] * factor); });
}

// bias (E) += +-rate toward the mean load: the steps are formed on the host from the host loads (as
// the CPU does, the mean summed in index order), copied over and added on the device.
void selection_bias_update(Tensor& bias, const std::vector<int64_t>& load, double rate) {
  const char* op = "selection_bias_update";
  const int64_t E = bias.numel();
  double mean = 0;
  for (int64_t e = 0; e < E; ++e) mean += static_cast<double>(load[e]) / static_cast<double>(E);
  std::vector<float> step(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    const double c = static_cast<double>(load[e]);
    step[e] = static_cast<float>(c < mean ? rate : (c > mean ? -rate : 0.0));
  }
  float* pstep = static_cast<float*>(scratch_buffer(op, E * int64_t{sizeof(float)}));
  MOE_CUDA_CHECK(op, cudaMemcpy(pstep, step.data(), step.size() * sizeof(float), cudaMemcpyHostToDevice));
  float* b = f32(op, bias);
  for_each(op, E, [=] __device__(int64_t e) { b[e] += pstep[e]; });
}

}  // namespace moe::cuda
