// CPU kernels of the optimizer step: AdamW and SGD updates, the sum of squares for the gradient norm,
// the scaling that clips (and averages) gradients, and the aux-free routing bias step.
#include <cmath>

#include "core/backend.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

// w, m, v, g: n elements; updated in place (core/optim_ops.h).
void adamw_update(Tensor& w, Tensor& m, Tensor& v, const Tensor& g, const AdamWScalars& s) {
  const int64_t n = w.numel();
  float* pw = w.f32();
  float* pm = m.f32();
  float* pv = v.f32();
  const float* pg = g.f32();
  const float b1 = s.beta1, b2 = s.beta2, c1 = s.bias_correction1, c2 = s.bias_correction2;
  const float lr = s.lr, eps = s.eps, wd = s.weight_decay;
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t j = 0; j < n; ++j) {
    pm[j] = b1 * pm[j] + (1.f - b1) * pg[j];
    pv[j] = b2 * pv[j] + (1.f - b2) * pg[j] * pg[j];
    pw[j] -= lr * ((pm[j] / c1) / (std::sqrt(pv[j] / c2) + eps) + wd * pw[j]);
  }
}

// w, buf, g: n elements; updated in place.
void sgd_update(Tensor& w, Tensor& buf, const Tensor& g, float lr, float momentum, float weight_decay) {
  const int64_t n = w.numel();
  float* pw = w.f32();
  float* pb = buf.f32();
  const float* pg = g.f32();
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t j = 0; j < n; ++j) {
    pb[j] = momentum * pb[j] + pg[j];
    pw[j] -= lr * (pb[j] + weight_decay * pw[j]);
  }
}

// sum of x_i^2 in double, in index order: the same sum, bit for bit, whatever the thread count.
double sum_of_squares(const Tensor& x) {
  const float* p = x.f32();
  double s = 0.0;
  for (int64_t i = 0; i < x.numel(); ++i) s += static_cast<double>(p[i]) * p[i];
  return s;
}

// x_i = float(x_i * factor), the product in double.
void scale_in_place(Tensor& x, double factor) {
  const int64_t n = x.numel();
  float* p = x.f32();
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(p[i] * factor);
}

// bias (E) += +-rate toward the mean load, the mean summed in index order.
void selection_bias_update(Tensor& bias, const std::vector<int64_t>& load, double rate) {
  const int64_t E = bias.numel();
  double mean = 0;
  for (int64_t e = 0; e < E; ++e) mean += static_cast<double>(load[e]) / static_cast<double>(E);
  float* b = bias.f32();
  for (int64_t e = 0; e < E; ++e) {
    const double c = static_cast<double>(load[e]);
    b[e] += static_cast<float>(c < mean ? rate : (c > mean ? -rate : 0.0));
  }
}

}  // namespace moe::cpu
