// The MoE layer: router -> dispatch plan -> permute -> [all-to-all] -> experts -> [all-to-all] ->
// combine, plus the load-balancing and z-losses. Each stage is its own function (router.h,
// dispatch_plan.h, experts.h, ops.h combine, parallel/token_exchange.h). On one process, or with
// expert-parallel size 1, the exchanges are skipped; with ep > 1 each rank runs only its own experts
// on the tokens every rank of its expert-parallel group sent it.
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
#include "parallel/process_groups.h"
#include "parallel/token_exchange.h"

namespace moe {

struct MoEWeights {
  Tensor w_gate;  // (d, E), replicated on every rank
  Tensor w_in;    // (E_local, d, in_cols), this rank's experts in global id order
  Tensor w_out;   // (E_local, h, d)
};

// Seconds spent in each phase of the last call (forward) and its backward.
struct MoEPhaseTimes {
  double router = 0;           // gate GEMM, softmax, top-k (and jitter)
  double permute = 0;          // dispatch plan, gathering tokens into expert order and regrouping
                               // received rows (scatters in backward)
  double counts_exchange = 0;  // all-to-all of per-expert counts (forward only)
  double token_exchange = 0;   // all-to-all-v towards the experts (tokens; output gradients in backward)
  double experts = 0;          // the grouped expert FFN
  double return_exchange = 0;  // all-to-all-v back to the source ranks
  double combine = 0;          // weighted sum of expert outputs back into token order
  double losses = 0;           // load-balancing and z-loss (and the global-scope all-reduce)
  double total() const {
    return router + permute + counts_exchange + token_exchange + experts + return_exchange + combine + losses;
  }
  double exchanges() const { return counts_exchange + token_exchange + return_exchange; }
};

// Per-call routing statistics.
struct MoEStats {
  int64_t tokens = 0;
  int64_t capacity = -1;          // C for this call, -1 in dropless mode
  std::vector<int64_t> routed;    // (E) this rank's choices per expert before dropping
  std::vector<int64_t> kept;      // (E) this rank's choices per expert after dropping
  int64_t kept_total = 0;
  int64_t dropped_total = 0;
  double aux_loss = 0.0;          // already multiplied by aux_loss_coeff; the global value in
                                  // the global scope
  double z_loss = 0.0;            // already multiplied by z_loss_coeff
  MoEPhaseTimes forward_time;
  MoEPhaseTimes backward_time;
};

class MoELayer {
 public:
  // Validates cfg (InvalidArgument naming the bad parameter) and initialises the weights with
  // N(0, cfg.init_std) from counter-based streams of `seed`, so expert e's weights depend only on
  // (seed, e) whichever rank holds it. groups == nullptr: one process holding every expert;
  // otherwise this rank holds groups->layout's experts and exchanges tokens over
  // groups->expert_parallel. groups must outlive the layer; its layout must have cfg.num_experts.
  MoELayer(const MoEConfig& cfg, uint64_t seed, const ProcessGroups* groups = nullptr);

  // x (T, d) -> y (T, d) = sum over kept choices of weight * expert output. The residual path is the
  // caller's. T may be 0. The layer keeps a reference to x (no copy): x must stay unchanged until
  // backward. Throws InvalidArgument on a wrong shape or a non-finite input value. Saves
  // what the backward needs; the next forward overwrites it. Collective over the expert-parallel
  // group (and the world, for the global load-balancing scope) when distributed.
  void forward(Tensor& y, const Tensor& x, bool training);

  // dy (T, d): accumulates dx (T, d) and the weight gradients, including the gradients of this
  // call's load-balancing and z-losses. Gradients are this rank's share of d(mean over ranks of the
  // rank losses): summing them over ranks and dividing by the world size (sync_gradients) gives
  // the gradient of the training objective, each loss entering it with weight 1.
  void backward(Tensor& dx, const Tensor& dy);

  // Adds w_gate (dense) and w_in, w_out (expert) under "<prefix>.name".
  void register_parameters(ParameterRegistry& registry, const std::string& prefix);

  const MoEConfig& config() const { return cfg_; }
  // Forward calls so far: the position of the jitter noise stream, saved and restored by checkpoints.
  uint64_t calls() const { return calls_; }
  void set_calls(uint64_t calls) { calls_ = calls; }
  // Global id of this rank's first expert, and how many it holds.
  int64_t first_expert() const { return first_expert_; }
  int64_t local_experts() const { return local_experts_; }
  const MoEStats& stats() const { return stats_; }
  const DispatchPlan& plan() const { return plan_; }
  const RouterOutput& router_output() const { return router_; }

  MoEWeights weights;
  MoEWeights grads;
  // (E) added to the router probabilities when choosing experts, never to the combine weights:
  // the auxiliary-loss-free balancing state (zero unless a trainer nudges it). Not a parameter.
  Tensor selection_bias;

 private:
  bool distributed() const { return groups_ != nullptr && groups_->layout.ep > 1; }

  MoEConfig cfg_;
  uint64_t seed_;
  const ProcessGroups* groups_;
  int64_t first_expert_ = 0;
  int64_t local_experts_ = 0;
  uint64_t calls_ = 0;  // advances the jitter noise stream

  // Saved by forward for backward.
  Tensor x_;
  RouterOutput router_;
  DispatchPlan plan_;
  LoadBalanceTerms balance_;
  Tensor x_perm_;       // (M, d) kept tokens grouped by expert
  ExchangePlan exchange_;  // distributed only
  Tensor x_recv_;       // (R, d) distributed: received rows, source-major
  Tensor x_local_;      // (R, d) distributed: received rows, expert-major (the experts' input)
  ExpertActivations activations_;
  Tensor y_local_;      // (R, d) distributed: expert outputs, expert-major
  Tensor y_recv_;       // (R, d) distributed: expert outputs, source-major (to send back)
  Tensor expert_out_;   // (M, d)
  MoEStats stats_;

  // Backward scratch, kept between calls.
  Tensor d_expert_out_;  // (M, d)
  Tensor dx_perm_;       // (M, d)
  Tensor d_recv_;        // (R, d) distributed
  Tensor d_local_;       // (R, d) distributed
  Tensor dx_local_;      // (R, d) distributed
  Tensor dx_recv_;       // (R, d) distributed
  Tensor dweight_;       // (T, k)
  Tensor dprobs_;        // (T, E)
  Tensor dlogits_;       // (T, E)
};

}  // namespace moe
