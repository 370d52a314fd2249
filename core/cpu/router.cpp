// CPU router kernels: top-k selection with its backward, and the multiplicative jitter of the router input.
#include <cfloat>
#include <vector>

#include "core/backend.h"
#include "core/cpu/index_check.h"
#include "core/cpu/omp_threshold.h"
#include "core/random.h"

namespace moe::cpu {

// probs (T, E), selection_bias (E) or null -> expert (T, k) int32, weight (T, k).
void topk_forward(Tensor& expert, Tensor& weight, const Tensor& probs, int64_t k, bool renormalize,
                  const Tensor* selection_bias, float scale) {
  const int64_t T = probs.dim(0), E = probs.dim(1);
  const float* p = probs.f32();
  const float* bias = selection_bias != nullptr ? selection_bias->f32() : nullptr;
  int32_t* idx = expert.i32();
  float* w = weight.f32();
  std::vector<float> score(k);  // selection scores of the chosen experts, best first
  for (int64_t t = 0; t < T; ++t) {
    const float* row = p + t * E;
    int32_t* ti = idx + t * k;
    // Insertion into a sorted list of k: E and k are small (tens), so this beats a heap.
    int64_t n = 0;
    for (int64_t e = 0; e < E; ++e) {
      const float v = bias != nullptr ? row[e] + bias[e] : row[e];
      if (n == k && !(v > score[k - 1])) continue;  // strict: ties keep the lower expert id
      int64_t pos = n < k ? n++ : k - 1;
      while (pos > 0 && v > score[pos - 1]) {
        score[pos] = score[pos - 1];
        ti[pos] = ti[pos - 1];
        --pos;
      }
      score[pos] = v;
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
  }
}

// dprobs (T, E) += d(weight (T, k)) / d(probs) applied to dweight (T, k).
void topk_backward(Tensor& dprobs, const Tensor& dweight, const Tensor& expert, const Tensor& weight,
                   const Tensor& probs, bool renormalize, float scale) {
  const int64_t T = probs.dim(0), E = probs.dim(1), k = expert.dim(1);
  require_indices_in_range("topk_backward", "expert", expert, 0, E);
  const int32_t* idx = expert.i32();
  const float* w = weight.f32();
  const float* dw = dweight.f32();
  const float* p = probs.f32();
  float* dp = dprobs.f32();
  for (int64_t t = 0; t < T; ++t) {
    const int32_t* ti = idx + t * k;
    if (!renormalize) {
      for (int64_t j = 0; j < k; ++j) dp[t * E + ti[j]] += scale * dw[t * k + j];
      continue;
    }
    // w_j = a p_j / S with S = sum_i p_i and a = scale, so dL/dp_j = (a dw_j - sum_i dw_i w_i) / S.
    float sum = 0.f, dot = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      sum += p[t * E + ti[j]];
      dot += dw[t * k + j] * w[t * k + j];
    }
    if (sum < FLT_MIN) continue;  // the forward's equal weights do not depend on the probabilities
    for (int64_t j = 0; j < k; ++j) dp[t * E + ti[j]] += (scale * dw[t * k + j] - dot) / sum;
  }
}

// noise, x, y (T, d): noise = U[1 - eps, 1 + eps) of counter offset + i, y = x * noise.
void jitter_forward(Tensor& y, Tensor& noise, const Tensor& x, float eps, uint64_t stream, uint64_t offset) {
  const int64_t n = x.numel();
  const float lo = 1.f - eps, hi = 1.f + eps;
  const float* xs = x.f32();
  float* js = noise.f32();
  float* ys = y.f32();
  // The expression of fill_uniform (core/random.cpp), so the noise is the same bits as before.
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) js[i] = lo + (hi - lo) * uniform01(stream, offset + static_cast<uint64_t>(i));
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) ys[i] = xs[i] * js[i];
}

// dx, dy, noise (T, d): dx += dy * noise (the router saw x * noise).
void jitter_backward(Tensor& dx, const Tensor& dy, const Tensor& noise) {
  const int64_t n = dx.numel();
  const float* g = dy.f32();
  const float* j = noise.f32();
  float* out = dx.f32();
#pragma omp parallel for if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) out[i] += g[i] * j[i];
}

}  // namespace moe::cpu
