// The router (gating module): logits = x W_gate in fp32, scores (softmax or sigmoid), top-k experts and
// their weights (docs/routing.md, "Scoring functions").
#pragma once

#include <cstdint>

#include "core/moe/moe_config.h"
#include "core/tensor.h"

namespace moe {

// What the router's forward computes and its backward needs.
struct RouterOutput {
  Tensor x_routed;  // (T, d) the input the router saw: x * jitter in training with jitter, else x
  Tensor jitter;    // (T, d) multiplicative noise, undefined when none was applied
  Tensor logits;    // (T, E)
  Tensor probs;     // (T, E) the scores: softmax(logits), or sigmoid(logits) with score_function = sigmoid;
                    // what the top-k and the drop policy `probs` rank
  Tensor balance_probs;  // (T, E) the per-token distribution the load-balancing loss's P averages:
                         // probs itself (the same tensor) with softmax; probs / (row sum of probs) with
                         // sigmoid (DeepSeek-V3's normalised scores)
  Tensor expert;    // (T, k) int32 chosen expert ids, highest score (+ selection bias) first (ties: lower id)
  Tensor weight;    // (T, k) combine weights: scores of the chosen experts, renormalised to sum to 1 if
                    // configured, times routed_scaling_factor
  // routing = expert_choice: every token is offered to every expert, k = E. expert (T, E) holds 0 .. E-1 in
  // every row, weight is probs itself (the same tensor), and which offers count is chosen_token, set by
  // expert_choice_route: (E, C) int32, expert e's C tokens, highest score first (ties: lower token).
  Tensor chosen_token;
};

// x (T, d), w_gate (d, E). Jitter applies when training and cfg.jitter_eps > 0; its noise is value
// (token_offset + t) * d + c of `jitter_stream`, so each token's noise is fixed by its global index.
// selection_bias (E) or null: added to the scores for choosing the top k only, never to the combine
// weights (auxiliary-loss-free balancing, DeepSeek-V3). With cfg.routing_groups > 0 (a number: the MoE
// layer resolves "ep") each token chooses its top k among the experts of its top_groups groups only
// (group_limit_forward, core/ops.h); the weights and the backward are unchanged.
void router_forward(RouterOutput& out, const Tensor& x, const Tensor& w_gate, const MoEConfig& cfg,
                    bool training, uint64_t jitter_stream, int64_t token_offset,
                    const Tensor* selection_bias = nullptr);

// routing = expert_choice, after router_forward: each expert takes its min(capacity, T) tokens of highest
// score (the op expert_choice_topk) into out.chosen_token. capacity >= 0.
void expert_choice_route(RouterOutput& out, int64_t capacity);

// routing = hash or table: token t's experts are row token_ids[t] of routes (V, k) int32 (the static map,
// core/moe/static_routing.h), each weighted 1/k (the op static_route_forward). There is no router: only
// expert and weight are set, the other fields are left undefined; nothing has a gradient.
void static_router_forward(RouterOutput& out, const Tensor& routes, const Tensor& token_ids);

// Backward of the router. Inputs: dweight (T, k) from the combine, dbalance (T, E) holding any gradient
// already flowing into balance_probs (the load-balancing loss), dlogits (T, E) holding any into the
// logits (the z-loss). Both buffers are used as scratch. Accumulates into dx (T, d) and dw_gate (d, E);
// either may be null.
void router_backward(Tensor* dx, Tensor* dw_gate, Tensor& dbalance, Tensor& dlogits, const Tensor& dweight,
                     const Tensor& w_gate, const RouterOutput& saved, const MoEConfig& cfg);

// Top-k selection and its backward are the ops topk_forward and topk_backward of core/ops.h.

}  // namespace moe
