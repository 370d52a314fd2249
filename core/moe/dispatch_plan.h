// The dispatch plan: which (token, choice) pairs each expert keeps under its capacity, and where each
// kept pair sits in the permuted token buffer. Computed once per MoE call; forward and backward, and
// the local and distributed paths, all read the same plan.
#pragma once

#include <cstdint>
#include <vector>

#include "core/moe/moe_config.h"
#include "core/tensor.h"

namespace moe {

// The permuted buffer holds every kept pair grouped by expert id in increasing order; inside an
// expert's segment, pairs appear in token order. Since each rank owns a contiguous range of expert
// ids, the buffer is also grouped by destination rank, ready for an all-to-all-v.
struct DispatchPlan {
  int64_t num_tokens = 0;   // T
  int64_t top_k = 0;        // k
  int64_t num_experts = 0;  // E
  int64_t capacity = -1;    // C, or -1 in dropless mode
  std::vector<int64_t> routed;  // (E) choices that picked expert e, before dropping (= kept for expert choice)
  std::vector<int64_t> kept;    // (E) choices expert e keeps: min(routed, C)
  std::vector<int64_t> offset;  // (E + 1) first row of expert e's segment; offset[E] = rows in all
  // Made on the host; the MoE layer moves these two to its device (the counts above stay host values).
  Tensor source_token;          // (M) int32: the token permuted row m came from (M = offset[E])
  Tensor slot;                  // (T, k) int32: permuted row of choice (t, j), -1 when dropped

  int64_t num_kept() const { return offset.empty() ? 0 : offset.back(); }
  // The routed choices the plan does not keep (T k - kept for token choice; 0 for expert choice).
  int64_t num_dropped() const {
    int64_t routed_total = 0;
    for (int64_t r : routed) routed_total += r;
    return routed_total - num_kept();
  }
};

// expert (T, k) int32 in [0, E) with distinct ids per row; probs (T, E) ranks choices under the
// `probs` policy (ties go to the earlier token), and may be undefined under the others (static routing
// has no probabilities). capacity = -1 keeps everything.
DispatchPlan make_dispatch_plan(const Tensor& expert, const Tensor& probs, int64_t num_experts,
                                int64_t capacity, DropPolicy policy);

// Expert-choice routing (routing = expert_choice): chosen_token (E, C) int32 on the host, expert e's C
// distinct tokens in [0, num_tokens) (RouterOutput::chosen_token). The plan has k = E, choice (t, e) being
// "expert e took token t" (slot -1 where it did not), capacity = C, and routed = kept (an expert's choices
// are its kept tokens): nothing is dropped.
DispatchPlan make_expert_choice_plan(const Tensor& chosen_token, int64_t num_tokens);

}  // namespace moe
