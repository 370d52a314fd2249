// CUDA router kernels: top-k selection with its backward, and the multiplicative jitter of the router input.
#include <cfloat>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/index_check.h"
#include "core/cuda/launch.cuh"
#include "core/random.h"

namespace moe::cuda {

// probs (T, E), selection_bias (E) or null -> expert (T, k) int32, weight (T, k). A thread per token:
// E and k are small (tens).
void topk_forward(Tensor& expert, Tensor& weight, const Tensor& probs, int64_t k, bool renormalize,
                  const Tensor* selection_bias, float scale) {
  const char* op = "topk_forward";
  const int64_t E = probs.dim(1);
  const float* p = f32(op, probs);
  const float* bias = selection_bias != nullptr ? f32(op, *selection_bias) : nullptr;
  int32_t* idx = i32(op, expert);
  float* w = f32(op, weight);
  for_each(op, probs.dim(0), [=] __device__(int64_t t) {
    const float* row = p + t * E;
    int32_t* ti = idx + t * k;
    // The selection score of expert e; the chosen ones' scores are recomputed from ti (same bits).
    auto score = [=](int64_t e) { return bias != nullptr ? row[e] + bias[e] : row[e]; };
    // Insertion into the sorted list ti[0, n), best first, as the CPU does.
    int64_t n = 0;
    for (int64_t e = 0; e < E; ++e) {
      const float v = score(e);
      if (n == k && !(v > score(ti[k - 1]))) continue;  // strict: ties keep the lower expert id
      int64_t pos = n < k ? n++ : k - 1;
      while (pos > 0 && v > score(ti[pos - 1])) {
        ti[pos] = ti[pos - 1];
        --pos;
      }
      ti[pos] = static_cast<int32_t>(e);
    }
    float* tw = w + t * k;
    float sum = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      tw[j] = row[ti[j]];
      sum += tw[j];
    }
    if (renormalize) {
      // Chosen probabilities that all underflowed (the biased choice of aux-free balancing can pick
      // them): equal weights, as core/ops.h defines. A NaN sum fails the test and propagates.
      if (sum < FLT_MIN)
        for (int64_t j = 0; j < k; ++j) tw[j] = 1.f / static_cast<float>(k);
      else
        for (int64_t j = 0; j < k; ++j) tw[j] /= sum;
    }
    for (int64_t j = 0; j < k; ++j) tw[j] *= scale;  // exact for scale = 1
  });
}

// dprobs (T, E) += d(weight (T, k)) / d(probs) applied to dweight (T, k). A thread per token: a
// token's k experts are distinct, so no two threads write the same element.
void topk_backward(Tensor& dprobs, const Tensor& dweight, const Tensor& expert, const Tensor& weight,
                   const Tensor& probs, bool renormalize, float scale) {
  const char* op = "topk_backward";
  const int64_t E = probs.dim(1), k = expert.dim(1);
  require_indices_in_range(op, "expert", expert, 0, E);
  const int32_t* idx = i32(op, expert);
  const float* w = f32(op, weight);
  const float* dw = f32(op, dweight);
  const float* p = f32(op, probs);
  float* dp = f32(op, dprobs);
  for_each(op, probs.dim(0), [=] __device__(int64_t t) {
    const int32_t* ti = idx + t * k;
    if (!renormalize) {
      for (int64_t j = 0; j < k; ++j) dp[t * E + ti[j]] += scale * dw[t * k + j];
      return;
    }
    // w_j = a p_j / S with S = sum_i p_i and a = scale, so dL/dp_j = (a dw_j - sum_i dw_i w_i) / S.
    float sum = 0.f, dot = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      sum += p[t * E + ti[j]];
      dot += dw[t * k + j] * w[t * k + j];
    }
    if (sum < FLT_MIN) return;  // the forward's equal weights do not depend on the probabilities
    for (int64_t j = 0; j < k; ++j) dp[t * E + ti[j]] += (scale * dw[t * k + j] - dot) / sum;
  });
}

// noise, x, y (T, d): noise = U[1 - eps, 1 + eps) of counter offset + i (core/random.h, the CPU's
// generator and expression), y = x * noise.
void jitter_forward(Tensor& y, Tensor& noise, const Tensor& x, float eps, uint64_t stream, uint64_t offset) {
  const char* op = "jitter_forward";
  const float lo = 1.f - eps, hi = 1.f + eps;
  const float* xs = f32(op, x);
  float* js = f32(op, noise);
  float* ys = f32(op, y);
  for_each(op, x.numel(), [=] __device__(int64_t i) {
    js[i] = lo + (hi - lo) * uniform01(stream, offset + static_cast<uint64_t>(i));
    ys[i] = xs[i] * js[i];
  });
}

// dx, dy, noise (T, d): dx += dy * noise (the router saw x * noise).
void jitter_backward(Tensor& dx, const Tensor& dy, const Tensor& noise) {
  const char* op = "jitter_backward";
  const float* g = f32(op, dy);
  const float* j = f32(op, noise);
  float* out = f32(op, dx);
  for_each(op, dx.numel(), [=] __device__(int64_t i) { out[i] += g[i] * j[i]; });
}

}  // namespace moe::cuda
