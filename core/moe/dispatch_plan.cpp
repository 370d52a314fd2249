// Building the dispatch plan: capacity, drop policy and the token permutation.
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

}  // namespace

DispatchPlan make_dispatch_plan(const Tensor& expert, const Tensor& probs, int64_t num_experts,
                                int64_t capacity, DropPolicy policy) {
  MOE_ASSERT(expert.rank() == 2 && expert.dtype() == DType::I32, "expert ids are (T, k) int32");
  MOE_ASSERT(probs.rank() == 2 && probs.dim(0) == expert.dim(0) && probs.dim(1) == num_experts,
             "probs are (T, E)");
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
  std::vector<uint8_t> keep = choose_kept(plan, idx, probs.f32(), policy);

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
  return plan;
}

}  // namespace moe
