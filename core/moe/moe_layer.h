// The MoE layer on one process: router -> dispatch plan -> permute -> experts -> combine, plus the
// load-balancing and z-losses. Each stage is its own function (router.h, dispatch_plan.h,
// experts.h, ops.h combine), so the expert-parallel path inserts its all-to-all between the
// permute and the experts without touching them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/moe/aux_losses.h"
#include "core/moe/dispatch_plan.h"
#include "core/moe/experts.h"
#include "core/moe/moe_config.h"
#include "core/moe/router.h"
#include "core/parameters.h"
#include "core/tensor.h"

namespace moe {

struct MoEWeights {
  Tensor w_gate;  // (d, E)
  Tensor w_in;    // (E, d, in_cols)
  Tensor w_out;   // (E, h, d)
};

// Seconds spent in each phase of the last call (forward) and its backward.
struct MoEPhaseTimes {
  double router = 0;    // gate GEMM, softmax, top-k (and jitter)
  double permute = 0;   // dispatch plan and gathering tokens into expert order (scatter in backward)
  double experts = 0;   // the grouped expert FFN
  double combine = 0;   // weighted sum of expert outputs back into token order
  double losses = 0;    // load-balancing and z-loss
  double total() const { return router + permute + experts + combine + losses; }
};

// Per-call routing statistics.
struct MoEStats {
  int64_t tokens = 0;
  int64_t capacity = -1;          // C for this call, -1 in dropless mode
  std::vector<int64_t> routed;    // (E) choices per expert before dropping
  std::vector<int64_t> kept;      // (E) choices per expert after dropping
  int64_t kept_total = 0;
  int64_t dropped_total = 0;
  double aux_loss = 0.0;          // already multiplied by aux_loss_coeff
  double z_loss = 0.0;            // already multiplied by z_loss_coeff
  MoEPhaseTimes forward_time;
  MoEPhaseTimes backward_time;
};

class MoELayer {
 public:
  // Validates cfg (InvalidArgument naming the bad parameter) and initialises the weights with
  // N(0, cfg.init_std) from counter-based streams of `seed`, so expert e's weights depend only on
  // (seed, e).
  MoELayer(const MoEConfig& cfg, uint64_t seed);

  // x (T, d) -> y (T, d) = sum over kept choices of weight * expert output. The residual path is the
  // caller's. Throws InvalidArgument on a wrong shape or a non-finite input value. Saves what the
  // backward needs; the next forward overwrites it.
  void forward(Tensor& y, const Tensor& x, bool training);

  // dy (T, d): accumulates dx (T, d) and the weight gradients, including the gradients of this
  // call's load-balancing and z-losses (each entering the total loss with weight 1).
  void backward(Tensor& dx, const Tensor& dy);

  // Adds w_gate (dense) and w_in, w_out (expert) under "<prefix>.name".
  void register_parameters(ParameterRegistry& registry, const std::string& prefix);

  const MoEConfig& config() const { return cfg_; }
  const MoEStats& stats() const { return stats_; }
  const DispatchPlan& plan() const { return plan_; }
  const RouterOutput& router_output() const { return router_; }

  MoEWeights weights;
  MoEWeights grads;

 private:
  MoEConfig cfg_;
  uint64_t seed_;
  uint64_t calls_ = 0;  // advances the jitter noise stream

  // Saved by forward for backward.
  Tensor x_;
  RouterOutput router_;
  DispatchPlan plan_;
  LoadBalanceTerms balance_;
  Tensor x_perm_;       // (M, d) kept tokens grouped by expert
  ExpertActivations activations_;
  Tensor expert_out_;   // (M, d)
  MoEStats stats_;

  // Backward scratch, kept between calls.
  Tensor d_expert_out_;  // (M, d)
  Tensor dx_perm_;       // (M, d)
  Tensor dweight_;       // (T, k)
  Tensor dprobs_;        // (T, E)
  Tensor dlogits_;       // (T, E)
};

}  // namespace moe
