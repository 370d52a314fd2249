// CPU kernels of the router's auxiliary losses: load-balancing sums and gradient, z-loss and its gradient.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/cpu/index_check.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

// probs (T, E), expert (T, k) -> prob_sum (G, E), choice_count (G, E), in double; row t in group
// t / (T / G).
void load_balance_sums(std::vector<double>& prob_sum, std::vector<double>& choice_count, const Tensor& probs,
                       const Tensor& expert, int64_t groups) {
  const int64_t T = probs.dim(0), E = probs.dim(1), k = expert.dim(1), rows = T / groups;
  require_indices_in_range("load_balance_sums", "expert", expert, 0, E);
  prob_sum.assign(groups * E, 0.0);
  choice_count.assign(groups * E, 0.0);
  const float* p = probs.f32();
  const int32_t* idx = expert.i32();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) prob_sum[t / rows * E + e] += p[t * E + e];
  for (int64_t i = 0; i < T * k; ++i) choice_count[i / k / rows * E + idx[i]] += 1.0;
}

// dprobs (T, E) += g (G, E) on every row of each group, g[g, e] = dloss * coeff * E * f_ge / num_tokens / G
// rounded to float32.
void load_balance_backward(Tensor& dprobs, const std::vector<double>& choice_count, double num_choices,
                           double num_tokens, double coeff, double dloss) {
  const int64_t T = dprobs.dim(0), E = dprobs.dim(1), G = static_cast<int64_t>(choice_count.size()) / E;
  const int64_t rows = T / G;
  std::vector<float> g(G * E);
  for (int64_t i = 0; i < G * E; ++i)
    g[i] = static_cast<float>(dloss * coeff * E * (choice_count[i] / num_choices) / num_tokens / G);
  float* dp = dprobs.f32();
#pragma omp parallel for if (T * E >= kMinParallelElements)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) dp[t * E + e] += g[t / rows * E + e];
}

namespace {
// log(sum_j exp(row_j)) with the float32 row max subtracted first; the sum and the log in double.
double logsumexp_row(const float* row, int64_t n) {
  float m = row[0];
  for (int64_t j = 1; j < n; ++j) m = std::max(m, row[j]);
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += std::exp(static_cast<double>(row[j] - m));
  return m + std::log(s);
}
}  // namespace

// logits (T, E) -> coeff * sum_t lse_t^2 / mean_over.
double z_loss_forward(const Tensor& logits, double coeff, double mean_over) {
  if (mean_over == 0) return 0.0;
  const int64_t T = logits.dim(0), E = logits.dim(1);
  double sum = 0.0;  // sequential over t: the same sum, bit for bit, on every run and thread count
  for (int64_t t = 0; t < T; ++t) {
    double lse = logsumexp_row(logits.f32() + t * E, E);
    sum += lse * lse;
  }
  return coeff * sum / mean_over;
}

// dlogits (T, E) += dloss * coeff * 2 lse_t / mean_over * probs (T, E).
void z_loss_backward(Tensor& dlogits, const Tensor& logits, const Tensor& probs, double coeff,
                     double mean_over, double dloss) {
  if (mean_over == 0) return;
  const int64_t T = logits.dim(0), E = logits.dim(1);
  const float* p = probs.f32();
  const float* l = logits.f32();
  float* dl = dlogits.f32();
#pragma omp parallel for if (T * E >= kMinParallelElements)
  for (int64_t t = 0; t < T; ++t) {
    double lse = logsumexp_row(l + t * E, E);
    float scale = static_cast<float>(dloss * coeff * 2.0 * lse / mean_over);
    for (int64_t e = 0; e < E; ++e) dl[t * E + e] += scale * p[t * E + e];
  }
}

}  // namespace moe::cpu
