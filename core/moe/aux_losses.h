// The router's auxiliary losses: load balancing (Switch/GShard) and router z-loss (ST-MoE).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

// Ingredients of the load-balancing loss, split out so that a distributed caller can all-reduce
// them first (the "global" scope) before forming the product.
struct LoadBalanceTerms {
  std::vector<double> choice_count;  // (E) top-k choices that picked expert i, counted before dropping
  std::vector<double> prob_sum;      // (E) sum over tokens of the router probability of expert i
  double num_choices = 0;            // T * k
  double num_tokens = 0;             // T
  int ranks = 1;                     // processes whose terms these are (the world size once all-reduced)
};

// Local terms from probs (T, E) and the chosen experts (T, k).
LoadBalanceTerms load_balance_terms(const Tensor& probs, const Tensor& expert);

// coeff * E * sum_i f_i * P_i with f_i = choice_count_i / num_choices, P_i = prob_sum_i / num_tokens.
// Equals coeff under perfectly uniform routing; up to coeff * E when one expert takes everything.
// Returns 0 when there are no tokens.
double load_balancing_loss(const LoadBalanceTerms& terms, double coeff);

// dprobs (T, E) += dloss * coeff * E * f_i / num_tokens. f is not differentiable (a count); the
// gradient flows through P only, as in Switch Transformer.
void load_balancing_loss_backward(Tensor& dprobs, const LoadBalanceTerms& terms, double coeff,
                                  double dloss);

// coeff * sum_t logsumexp(logits_t)^2 / mean_over. logits (T, E). mean_over is the token count the
// mean is taken over (T locally; the global count when ranks average together).
double z_loss(const Tensor& logits, double coeff, double mean_over);
// dlogits (T, E) += dloss * coeff * 2 * lse_t / mean_over * probs_tj, with probs = softmax(logits).
void z_loss_backward(Tensor& dlogits, const Tensor& logits, const Tensor& probs, double coeff,
                     double mean_over, double dloss);

}  // namespace moe
