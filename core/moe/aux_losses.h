// The router's load-balancing loss (Switch/GShard; per sequence as DeepSeek-V3's sequence-wise loss); the
// router z-loss (ST-MoE) is an op of core/ops.h. docs/routing.md has the formulas.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

// Ingredients of the load-balancing loss per group of tokens (G groups: the sequences in the sequence
// scope, else one), split out so that a distributed caller can all-reduce them first (the "global"
// scope, G = 1) before forming the product.
struct LoadBalanceTerms {
  std::vector<double> choice_count;  // (G, E) top-k choices of group g that picked expert i, counted
                                     // before dropping
  std::vector<double> prob_sum;      // (G, E) sum over group g's tokens of P's distribution (the router's
                                     // balance_probs) at expert i
  double num_choices = 0;            // per group: its tokens * k
  double num_tokens = 0;             // per group: its tokens
  int64_t groups = 1;                // G
  int ranks = 1;                     // processes whose terms these are (the world size once all-reduced)
};

// Local terms from balance_probs (T, E) and the chosen experts (T, k) (the op load_balance_sums,
// core/ops.h), over `groups` consecutive groups of T / groups tokens (>= 1, dividing T).
LoadBalanceTerms load_balance_terms(const Tensor& balance_probs, const Tensor& expert, int64_t groups = 1);

// coeff * E * (1/G) sum_g sum_i f_gi * P_gi with f_gi = choice_count_gi / num_choices and
// P_gi = prob_sum_gi / num_tokens. Equals coeff under perfectly uniform routing (within each group);
// up to coeff * E when one expert takes everything. Returns 0 when there are no tokens.
double load_balancing_loss(const LoadBalanceTerms& terms, double coeff);

// dbalance_probs (T, E) += dloss * coeff * E * f_gi / num_tokens / G for each token of group g. f is
// not differentiable (a count); the gradient flows through P only, as in Switch Transformer.
void load_balancing_loss_backward(Tensor& dbalance_probs, const LoadBalanceTerms& terms, double coeff,
                                  double dloss);

// The router z-loss (ST-MoE) and its gradient are the ops z_loss_forward and z_loss_backward of
// core/ops.h.

}  // namespace moe
