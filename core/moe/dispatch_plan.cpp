// Building the dispatch plan: capacity, drop policy and the token permutation (and the plan of
// expert-choice routing).
#include "core/moe/dispatch_plan.h"

#include <algorithm>

#include "core/check.h"

namespace moe {

namespace {

// keep[t * k + j] = 1 for each choice that `policy` keeps within `capacity` of its expert.
std::vector<uint8_t> choose_kept(const DispatchPlan& plan, const int32_t* idx, const float* probs,
                                 DropPolicy policy) {
  const int64_t T = plan.num_tokens, k = plan.top_k, E = plan.num_experts, C = plan.capacity;
  std::vector<uint8_t> keep(T * k, 1);
  if (C < 0) return keep;
  bool over = false;
  for (int64_t e = 0; e < E; ++e) over |= plan.routed[e] > C;
  if (!over) return keep;

  if (policy != DropPolicy::Probs) {
    // Slots go first come, first served: Position visits the choices in token order (t, then j),
    // PositionByChoice every token's choice j = 0 first, then j = 1, ...
    const bool by_choice = policy == DropPolicy::PositionByChoice;
    std::vector<int64_t> used(E, 0);
    for (int64_t n = 0; n < T * k; ++n) {
      const int64_t i = by_choice ? (n % T) * k + n / T : n;
      keep[i] = used[idx[i]]++ < C;
    }
    return keep;
  }
  // Probs: per over-full expert, keep the C choices with the highest router probability.
  std::vector<std::vector<int64_t>> choices(E);  // flat choice index t * k + j, in token order
  for (int64_t i = 0; i < T * k; ++i)
    if (plan.routed[idx[i]] > C) choices[idx[i]].push_back(i);
  for (int64_t e = 0; e < E; ++e) {
    auto& list = choices[e];
    if (list.empty()) continue;
    auto by_prob = [&](int64_t a, int64_t b) {
      float pa = probs[(a / k) * E + e], pb = probs[(b / k) * E + e];
      return pa > pb || (pa == pb && a < b);
    };
    std::nth_element(list.begin(), list.begin() + C, list.end(), by_prob);
    for (auto it = list.begin() + C; it != list.end(); ++it) keep[*it] = 0;
  }
  return keep;
}

// Fills plan's kept, offset, slot and source_token from the choices idx (T, k) and which of them are kept:
// kept choices grouped by expert, in token order inside each expert's segment.
void permute_kept(DispatchPlan& plan, const int32_t* idx, const std::vector<uint8_t>& keep) {
  const int64_t T = plan.num_tokens, k = plan.top_k, E = plan.num_experts;
  plan.kept.assign(E, 0);
  for (int64_t i = 0; i < T * k; ++i) plan.kept[idx[i]] += keep[i];
  plan.offset.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) plan.offset[e + 1] = plan.offset[e] + plan.kept[e];

  plan.slot = Tensor::empty({T, k}, DType::I32);
  plan.source_token = Tensor::empty({plan.num_kept()}, DType::I32);
  int32_t* slot = plan.slot.i32();
  int32_t* source = plan.source_token.i32();
  std::vector<int64_t> next(plan.offset.begin(), plan.offset.end() - 1);
  for (int64_t i = 0; i < T * k; ++i) {
    if (!keep[i]) {
      slot[i] = -1;
      continue;
    }
    int64_t row = next[idx[i]]++;
    slot[i] = static_cast<int32_t>(row);
    source[row] = static_cast<int32_t>(i / k);
  }
}

}  // namespace

DispatchPlan make_dispatch_plan(const Tensor& expert, const Tensor& probs, int64_t num_experts,
                                int64_t capacity, DropPolicy policy) {
  MOE_ASSERT(expert.rank() == 2 && expert.dtype() == DType::I32, "expert ids are (T, k) int32");
  MOE_ASSERT(policy != DropPolicy::Probs ||
                 (probs.rank() == 2 && probs.dim(0) == expert.dim(0) && probs.dim(1) == num_experts),
             "the probs policy ranks by probs (T, E)");
  DispatchPlan plan;
  plan.num_tokens = expert.dim(0);
  plan.top_k = expert.dim(1);
  plan.num_experts = num_experts;
  plan.capacity = capacity;
  const int64_t T = plan.num_tokens, k = plan.top_k, E = num_experts;
  const int32_t* idx = expert.i32();

  plan.routed.assign(E, 0);
  for (int64_t i = 0; i < T * k; ++i) {
    MOE_ASSERT(idx[i] >= 0 && idx[i] < E, "router produced an expert id outside [0, E)");
    ++plan.routed[idx[i]];
  }
  permute_kept(plan, idx, choose_kept(plan, idx, probs.defined() ? probs.f32() : nullptr, policy));
  return plan;
}

DispatchPlan make_expert_choice_plan(const Tensor& chosen_token, int64_t num_tokens) {
  MOE_ASSERT(chosen_token.rank() == 2 && chosen_token.dtype() == DType::I32, "chosen tokens are (E, C) int32");
  DispatchPlan plan;
  plan.num_tokens = num_tokens;
  plan.num_experts = chosen_token.dim(0);
  plan.top_k = plan.num_experts;
  plan.capacity = chosen_token.dim(1);
  const int64_t T = num_tokens, E = plan.num_experts, C = plan.capacity;
  std::vector<int32_t> expert(T * E);  // choice (t, e) is expert e's
  for (int64_t i = 0; i < T * E; ++i) expert[i] = static_cast<int32_t>(i % E);
  std::vector<uint8_t> keep(T * E, 0);
  const int32_t* chosen = chosen_token.i32();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t t = chosen[e * C + c];
      MOE_ASSERT(t >= 0 && t < T && !keep[t * E + e], "an expert chose a token outside [0, T) or twice");
      keep[t * E + e] = 1;
    }
  permute_kept(plan, expert.data(), keep);
  plan.routed = plan.kept;
  return plan;
}

}  // namespace moe
