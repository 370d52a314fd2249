// Load-balancing loss: its terms and gradient through the ops of core/ops.h, the scalar loss on the host.
#include "core/moe/aux_losses.h"

#include "core/ops.h"

namespace moe {

LoadBalanceTerms load_balance_terms(const Tensor& probs, const Tensor& expert) {
  LoadBalanceTerms terms;
  load_balance_sums(terms.prob_sum, terms.choice_count, probs, expert);
  terms.num_choices = static_cast<double>(probs.dim(0) * expert.dim(1));
  terms.num_tokens = static_cast<double>(probs.dim(0));
  return terms;
}

// E products of host doubles (the terms, all-reduced across ranks in the global scope): no tensor.
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
  load_balance_backward(dprobs, terms.choice_count, terms.num_choices, terms.num_tokens, coeff, dloss);
}

}  // namespace moe
