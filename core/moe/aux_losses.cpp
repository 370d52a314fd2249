// Load-balancing loss: its terms and gradient through the ops of core/ops.h, the scalar loss on the host.
#include "core/moe/aux_losses.h"

#include "core/ops.h"

namespace moe {

LoadBalanceTerms load_balance_terms(const Tensor& balance_probs, const Tensor& expert, int64_t groups) {
  LoadBalanceTerms terms;
  load_balance_sums(terms.prob_sum, terms.choice_count, balance_probs, expert, groups);
  const int64_t tokens = balance_probs.dim(0) / groups;
  terms.num_choices = static_cast<double>(tokens * expert.dim(1));
  terms.num_tokens = static_cast<double>(tokens);
  terms.groups = groups;
  return terms;
}

// G * E products of host doubles (the terms, all-reduced across ranks in the global scope): no tensor.
double load_balancing_loss(const LoadBalanceTerms& terms, double coeff) {
  if (terms.num_tokens == 0) return 0.0;
  const int64_t G = terms.groups, E = static_cast<int64_t>(terms.choice_count.size()) / G;
  double total = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    double sum = 0.0;
    for (int64_t i = g * E; i < (g + 1) * E; ++i)
      sum += (terms.choice_count[i] / terms.num_choices) * (terms.prob_sum[i] / terms.num_tokens);
    total += sum;
  }
  return coeff * static_cast<double>(E) * (total / static_cast<double>(G));
}

void load_balancing_loss_backward(Tensor& dbalance_probs, const LoadBalanceTerms& terms, double coeff,
                                  double dloss) {
  if (terms.num_tokens == 0) return;
  load_balance_backward(dbalance_probs, terms.choice_count, terms.num_choices, terms.num_tokens, coeff, dloss);
}

}  // namespace moe
