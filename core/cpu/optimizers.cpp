// CPU kernels of the optimizer step: AdamW and SGD updates, the sum of squares for the gradient norm,
// the scaling that clips (and averages) gradients, and the aux-free routing bias step.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/cpu/lane_sum.h"
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

// sum of x_i^2 in double over a fixed partition: chunks of kSumChunk elements, each a lane_sum
// (core/cpu/lane_sum.h: the loop vectorises instead of waiting on one chain of additions), then the
// chunks in order.
// The partition depends on nothing but n: the same bits for any thread count. The squares of
// float32 values are exact in double, so whether the compiler fuses them into the additions does
// not change the result either.
constexpr int64_t kSumChunk = 4096;

double sum_of_squares(const Tensor& x) {
  const int64_t n = x.numel(), chunks = (n + kSumChunk - 1) / kSumChunk;
  const float* p = x.f32();
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t c = 0; c < chunks; ++c) {
    const float* chunk = p + c * kSumChunk;
    partial[c] = lane_sum<double>(std::min(kSumChunk, n - c * kSumChunk),
                                  [&](int64_t i) { return static_cast<double>(chunk[i]) * chunk[i]; });
  }
  double s = 0.0;
  for (double chunk : partial) s += chunk;
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
