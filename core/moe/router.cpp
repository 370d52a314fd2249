// The router: gate projection, softmax or sigmoid scores, top-k and their backward passes, wired from the
// ops of core/ops.h.
#include "core/moe/router.h"

#include <algorithm>

#include "core/check.h"
#include "core/ops.h"

namespace moe {

void router_forward(RouterOutput& out, const Tensor& x, const Tensor& w_gate, const MoEConfig& cfg,
                    bool training, uint64_t jitter_stream, int64_t token_offset, const Tensor* selection_bias) {
  const int64_t T = x.dim(0), d = x.dim(1), E = cfg.num_experts, k = cfg.top_k;
  const Device device = x.device();
  if (training && cfg.jitter_eps > 0.f) {
    out.jitter = Tensor::empty({T, d}, DType::F32, device);
    out.x_routed = Tensor::empty({T, d}, DType::F32, device);
    jitter_forward(out.x_routed, out.jitter, x, cfg.jitter_eps, jitter_stream,
                   static_cast<uint64_t>(token_offset * d));
  } else {
    out.jitter = Tensor();
    out.x_routed = x;
  }
  out.logits = Tensor::empty({T, E}, DType::F32, device);
  out.probs = Tensor::empty({T, E}, DType::F32, device);
  linear_forward(out.logits, out.x_routed, w_gate, nullptr);
  out.chosen_token = Tensor();
  if (cfg.routing == Routing::ExpertChoice) {  // softmax scores (MoEConfig::validate); the experts choose
    softmax_forward(out.probs, out.logits);
    out.balance_probs = out.probs;
    out.weight = out.probs;
    out.expert = Tensor::empty({T * E}, DType::I32, device);
    index_ramp(out.expert, 0, 1, E);
    out.expert = out.expert.reshape({T, E});
    return;
  }
  out.expert = Tensor::empty({T, k}, DType::I32, device);
  out.weight = Tensor::empty({T, k}, DType::F32, device);
  if (cfg.score_function == ScoreFunction::Sigmoid) {
    sigmoid_forward(out.probs, out.logits);
    out.balance_probs = Tensor::empty({T, E}, DType::F32, device);
    normalize_rows_forward(out.balance_probs, out.probs);
  } else {
    softmax_forward(out.probs, out.logits);
    out.balance_probs = out.probs;
  }
  // Group-limited routing: the top k among the experts of each token's top_groups groups (all groups kept:
  // nothing to limit). The weights and the backward read the same probs.
  const Tensor* choose_from = &out.probs;
  Tensor limited;
  MOE_ASSERT(cfg.routing_groups != MoEConfig::kRoutingGroupsPerRank, "the MoE layer resolves routing_groups = ep");
  if (cfg.routing_groups > 0 && cfg.top_groups < cfg.routing_groups) {
    limited = Tensor::empty({T, E}, DType::F32, device);
    group_limit_forward(limited, out.probs, selection_bias, cfg.routing_groups, cfg.top_groups,
                        group_score_terms(cfg.group_score));
    choose_from = &limited;
  }
  topk_forward(out.expert, out.weight, *choose_from, k, cfg.renormalize, selection_bias, cfg.routed_scaling_factor);
}

void expert_choice_route(RouterOutput& out, int64_t capacity) {
  const int64_t T = out.probs.dim(0), E = out.probs.dim(1);
  out.chosen_token = Tensor::empty({E, std::min(capacity, T)}, DType::I32, out.probs.device());
  expert_choice_topk(out.chosen_token, out.probs);
}

void static_router_forward(RouterOutput& out, const Tensor& routes, const Tensor& token_ids) {
  const int64_t T = token_ids.dim(0), k = routes.dim(1);
  out = RouterOutput{};
  out.expert = Tensor::empty({T, k}, DType::I32, routes.device());
  out.weight = Tensor::empty({T, k}, DType::F32, routes.device());
  static_route_forward(out.expert, out.weight, routes, token_ids);
}

void router_backward(Tensor* dx, Tensor* dw_gate, Tensor& dbalance, Tensor& dlogits, const Tensor& dweight,
                     const Tensor& w_gate, const RouterOutput& saved, const MoEConfig& cfg) {
  if (cfg.score_function == ScoreFunction::Sigmoid) {
    Tensor dscores = Tensor::zeros(saved.probs.shape(), DType::F32, saved.probs.device());
    normalize_rows_backward(dscores, dbalance, saved.probs);
    topk_backward(dscores, dweight, saved.expert, saved.weight, saved.probs, cfg.renormalize,
                  cfg.routed_scaling_factor);
    sigmoid_backward(dlogits, dscores, saved.probs);
  } else {  // balance_probs is probs: dbalance is already the scores' gradient
    if (cfg.routing == Routing::ExpertChoice)
      add_scaled(dbalance, dweight, 1.0f);  // the weights are the scores themselves
    else
      topk_backward(dbalance, dweight, saved.expert, saved.weight, saved.probs, cfg.renormalize,
                    cfg.routed_scaling_factor);
    softmax_backward(dlogits, dbalance, saved.probs);
  }
  if (!saved.jitter.defined()) {
    linear_backward(dx, dw_gate, nullptr, dlogits, saved.x_routed, w_gate);
    return;
  }
  // The router saw x * jitter, so its input gradient reaches x multiplied by the same noise.
  if (dx != nullptr) {
    Tensor dx_routed = Tensor::zeros(saved.x_routed.shape(), DType::F32, saved.x_routed.device());
    linear_backward(&dx_routed, dw_gate, nullptr, dlogits, saved.x_routed, w_gate);
    jitter_backward(*dx, dx_routed, saved.jitter);
  } else {
    linear_backward(nullptr, dw_gate, nullptr, dlogits, saved.x_routed, w_gate);
  }
}

}  // namespace moe
