// Load-balancing loss and router z-loss with their gradients.
#include "core/moe/aux_losses.h"

#include <cmath>

namespace moe {

LoadBalanceTerms load_balance_terms(const Tensor& probs, const Tensor& expert) {
  const int64_t T = probs.dim(0), E = probs.dim(1), k = expert.dim(1);
  LoadBalanceTerms terms;
  terms.choice_count.assign(E, 0.0);
  terms.prob_sum.assign(E, 0.0);
  terms.num_choices = static_cast<double>(T * k);
  terms.num_tokens = static_cast<double>(T);
  const float* p = probs.f32();
  const int32_t* idx = expert.i32();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) terms.prob_sum[e] += p[t * E + e];
  for (int64_t i = 0; i < T * k; ++i) terms.choice_count[idx[i]] += 1.0;
  return terms;
}

double load_balancing_loss(const LoadBalanceTerms& terms, double coeff) {
  if (terms.num_tokens == 0) return 0.0;
  const size_t E = terms.choice_count.size();
  double sum = 0.0;
  for (size_t i = 0; i < E; ++i)
    sum += (terms.choice_count[i] / terms.num_choices) * (terms.prob_sum[i] / terms.num_tokens);
  return coeff * static_cast<double>(E) * sum;
}

void load_balancing_loss_backward(Tensor& dprobs, const LoadBalanceTerms& terms, double coeff,
                                  double dloss) {
  if (terms.num_tokens == 0) return;
  const int64_t T = dprobs.dim(0), E = dprobs.dim(1);
  std::vector<float> g(E);
  for (int64_t e = 0; e < E; ++e)
    g[e] = static_cast<float>(dloss * coeff * E * (terms.choice_count[e] / terms.num_choices) /
                              terms.num_tokens);
  float* dp = dprobs.f32();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) dp[t * E + e] += g[e];
}

namespace {
double logsumexp_row(const float* row, int64_t n) {
  float m = row[0];
  for (int64_t j = 1; j < n; ++j) m = std::max(m, row[j]);
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += std::exp(static_cast<double>(row[j] - m));
  return m + std::log(s);
}
}  // namespace

double z_loss(const Tensor& logits, double coeff, double mean_over) {
  if (mean_over == 0) return 0.0;
  const int64_t T = logits.dim(0), E = logits.dim(1);
  double sum = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    double lse = logsumexp_row(logits.f32() + t * E, E);
    sum += lse * lse;
  }
  return coeff * sum / mean_over;
}

void z_loss_backward(Tensor& dlogits, const Tensor& logits, const Tensor& probs, double coeff,
                     double mean_over, double dloss) {
  if (mean_over == 0) return;
  const int64_t T = logits.dim(0), E = logits.dim(1);
  const float* p = probs.f32();
  float* dl = dlogits.f32();
  for (int64_t t = 0; t < T; ++t) {
    double lse = logsumexp_row(logits.f32() + t * E, E);
    float scale = static_cast<float>(dloss * coeff * 2.0 * lse / mean_over);
    for (int64_t e = 0; e < E; ++e) dl[t * E + e] += scale * p[t * E + e];
  }
}

}  // namespace moe
