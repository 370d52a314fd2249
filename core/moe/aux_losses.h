// The router's load-balancing loss (Switch/GShard); the router z-loss (ST-MoE) is an op of core/ops.h.
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

// Local terms from probs (T, E) and the chosen experts (T, k) (the op load_balance_sums, core/ops.h).
LoadBalanceTerms load_balance_terms(const Tensor& probs, const Tensor& expert);

// coeff * E * sum_i f_i * P_i with f_i = choice_count_i / num_choices, P_i = prob_sum_i / num_tokens.
// Equals coeff under perfectly uniform routing; up to coeff * E when one expert takes everything.
// Returns 0 when there are no tokens.
double load_balancing_loss(const LoadBalanceTerms& terms, double coeff);

// dprobs (T, E) += dloss * coeff * E * f_i / num_tokens. f is not differentiable (a count); the
// gradient flows through P only, as in Switch Transformer.
void load_balancing_loss_backward(Tensor& dprobs, const LoadBalanceTerms& terms, double coeff,
                                  double dloss);

// The router z-loss (ST-MoE) and its gradient are the ops z_loss_forward and z_loss_backward of
// core/ops.h.

}  // namespace moe
