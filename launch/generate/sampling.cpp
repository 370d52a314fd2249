// Greedy choice and sampling of the next token (launch/generate/sampling.h).
#include "launch/generate/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/check.h"
#include "core/random.h"

namespace moe {

int32_t choose_token(std::span<const float> logits, const SamplingOptions& options, uint64_t draw) {
  MOE_ASSERT(!logits.empty() && options.temperature >= 0 && options.top_k >= 0 && options.top_p > 0 &&
                 options.top_p <= 1,
             "the caller checks the sampling options");
  const auto best = std::max_element(logits.begin(), logits.end());  // the first of equal maxima
  if (options.temperature == 0) return static_cast<int32_t>(best - logits.begin());

  // The candidates by logit, highest first (ties: the lower id), cut to top_k.
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  if (options.top_k > 0 && static_cast<size_t>(options.top_k) < order.size()) order.resize(options.top_k);
  // Softmax of logit / temperature over them, from the highest (so every exp is in (0, 1]).
  std::vector<double> p(order.size());
  double sum = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    p[i] = std::exp((static_cast<double>(logits[order[i]]) - logits[order[0]]) / options.temperature);
    sum += p[i];
  }
  // The nucleus: the shortest prefix whose probability reaches top_p.
  size_t keep = 0;
  double mass = 0;
  while (keep < p.size() && (keep == 0 || mass < options.top_p * sum)) mass += p[keep++];
  // Inverse CDF over the kept tokens' renormalised probabilities.
  const double u = uniform01(stream_id(options.seed, "generate"), draw) * mass;
  double cumulative = 0;
  for (size_t i = 0; i < keep; ++i) {
    cumulative += p[i];
    if (u < cumulative) return order[i];
  }
  return order[keep - 1];  // u within rounding of mass
}

}  // namespace moe
