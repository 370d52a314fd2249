// The MoE layer: router -> dispatch plan -> permute -> exchange to the experts -> experts ->
// exchange back -> combine, plus the load-balancing and z-losses. Each stage is its own function
// (router.h, dispatch_plan.h, experts.h, ops.h combine) and the exchange an interface
// (expert_exchange.h): on one process no row moves; over an expert-parallel group
// (parallel/all_to_all_exchange.h) each rank runs only its own experts on the tokens every rank of
// its group sent it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/moe/aux_losses.h"
#include "core/moe/dispatch_plan.h"
#include "core/moe/expert_exchange.h"
#include "core/moe/experts.h"
#include "core/moe/moe_config.h"
#include "core/moe/router.h"
#include "core/parameters.h"
#include "core/tensor.h"

namespace moe {

struct MoEWeights {
  Tensor w_gate;  // (d, E), replicated on every rank; undefined with static routing (hash, table: no router)
  Tensor w_in;    // (E_local, d, in_cols), this rank's experts in global id order
  Tensor w_out;   // (E_local, h, d)
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
                                  // the global scope, the mean over this rank's sequences in the
                                  // sequence scope
  double z_loss = 0.0;            // already multiplied by z_loss_coeff
  MoEPhaseTimes forward_time;
  MoEPhaseTimes backward_time;
};

class MoELayer {
 public:
  // Validates cfg (InvalidArgument naming the bad parameter) and initialises the weights with
  // N(0, cfg.init_std) from counter-based streams of `seed`, so expert e's weights depend only on
  // (seed, e) whichever rank holds it. exchange == nullptr: one process holding every expert
  // (LocalExpertExchange); otherwise this rank holds the exchange's experts, and the exchange must
  // be for cfg.num_experts experts; routing_groups = ep becomes one routing group per rank of the
  // exchange (config() holds the number). Static routing (hash, table) has no router: no w_gate; its
  // token id -> experts map (core/moe/static_routing.h: hash_routes of `seed`, or the routing_table file,
  // read here) is built once. Weights, gradients, selection_bias and activations live on `device`; forward
  // takes x there.
  MoELayer(const MoEConfig& cfg, uint64_t seed, std::unique_ptr<ExpertExchange> exchange = nullptr,
           Device device = Device::CPU);

  // x (T, d) -> y (T, d) = sum over kept choices of weight * expert output. The residual path is the
  // caller's. T may be 0. The layer keeps a reference to x (no copy): x must stay unchanged until
  // backward. Throws InvalidArgument on a wrong shape, on a T that is not a multiple of cfg.seq_len in
  // the sequence aux-loss scope (x must hold whole sequences), or on a non-finite input value. Saves
  // what the backward needs; the next forward overwrites it. Collective over the expert-parallel
  // group (and the world, for the global load-balancing scope) when distributed. token_ids (T) int32 on
  // x's device: the ids of the tokens of x's rows, which static routing (hash, table) routes by; required
  // there (InvalidArgument without them or for an id outside [0, vocab_size)), not read by the learned
  // routings. With static routing the load-balancing and z-losses are 0 and nothing flows to a router.
  void forward(Tensor& y, const Tensor& x, bool training, const Tensor* token_ids = nullptr);

  // dy (T, d): accumulates dx (T, d) and the weight gradients, including the gradients of this
  // call's load-balancing and z-losses. Gradients are this rank's share of d(mean over ranks of the
  // rank losses): summing them over ranks and dividing by the world size (sync_gradients) gives
  // the gradient of the training objective, each loss entering it with weight 1.
  void backward(Tensor& dx, const Tensor& dy);

  // Adds w_gate (dense; none with static routing) and w_in, w_out (expert) under "<prefix>.name".
  void register_parameters(ParameterRegistry& registry, const std::string& prefix);

  // With cfg.recompute_experts: the scratch the experts' activations go to, which the backward
  // recomputes, so every MoE layer of a model can share one (TransformerLM does). Asserts the flag.
  void share_expert_activations(std::shared_ptr<ExpertActivations> scratch);

  const MoEConfig& config() const { return cfg_; }
  // Forward calls so far: the position of the jitter noise stream, saved and restored by checkpoints.
  uint64_t calls() const { return calls_; }
  void set_calls(uint64_t calls) { calls_ = calls; }
  // Global id of this rank's first expert, and how many it holds.
  int64_t first_expert() const { return exchange_->first_expert(); }
  int64_t local_experts() const { return exchange_->local_experts(); }
  const MoEStats& stats() const { return stats_; }
  const DispatchPlan& plan() const { return plan_; }
  const RouterOutput& router_output() const { return router_; }

  MoEWeights weights;
  MoEWeights grads;
  // (E) added to the router probabilities when choosing experts, never to the combine weights:
  // the auxiliary-loss-free balancing state (zero unless a trainer nudges it). Not a parameter.
  Tensor selection_bias;

 private:
  MoEConfig cfg_;
  uint64_t seed_;
  std::unique_ptr<ExpertExchange> exchange_;
  uint64_t calls_ = 0;  // advances the jitter noise stream

  // The dtype of the token rows the experts read and write and the exchange moves: float32, or
  // bfloat16 with Precision::BF16 (then so are the expert weights' copies the products read).
  DType rows_dtype() const { return product_dtype(cfg_.precision); }

  Tensor routes_;  // (V, k) int32 static routing's map (hash, table), undefined otherwise

  // Saved by forward for backward. "Rows" tensors have rows_dtype(); the rest are float32.
  Tensor x_;
  RouterOutput router_;
  DispatchPlan plan_;
  LoadBalanceTerms balance_;
  Tensor x_rows_;       // (T, d) x in bfloat16 (bf16 runs), gathered into x_perm_
  Tensor x_perm_;       // (M, d) rows: kept tokens grouped by expert
  Tensor w_in_bf16_;    // bf16 runs: the expert weights' bfloat16 copies, made once per forward
  Tensor w_out_bf16_;
  const Tensor* w_in_product_ = nullptr;   // weights.w_in or w_in_bf16_: what the expert products read
  const Tensor* w_out_product_ = nullptr;  // weights.w_out or w_out_bf16_
  const std::vector<int64_t>* expert_offset_ = nullptr;  // (E_local + 1) the exchange's segment starts
  Tensor x_local_;      // (R, d) rows: the experts' input rows, when the exchange moves rows
  const Tensor* expert_in_ = nullptr;  // x_perm_ or x_local_: what the experts read
  std::shared_ptr<ExpertActivations> activations_ = std::make_shared<ExpertActivations>();
  Tensor y_experts_;    // (R, d) bf16 runs: the experts' float32 output before it is rounded to rows
  Tensor y_local_;      // (R, d) rows: the experts' output rows, when the exchange moves rows
  Tensor expert_out_;   // (M, d) rows: the experts' output back in dispatch order
  Tensor expert_out_f32_;  // (M, d) bf16 runs: expert_out_ in float32
  const Tensor* combine_rows_ = nullptr;  // expert_out_ or expert_out_f32_: what the combine reads
  MoEStats stats_;

  // Backward scratch, kept between calls.
  Tensor d_expert_out_;   // (M, d)
  Tensor d_expert_rows_;  // (M, d) bf16 runs: d_expert_out_ in bfloat16
  Tensor dx_perm_;        // (M, d) rows
  Tensor d_local_;        // (R, d) rows, when the exchange moves rows
  Tensor dx_experts_;     // (R, d) bf16 runs: the experts' float32 input gradient before it is rounded
  Tensor dx_local_;       // (R, d) rows, when the exchange moves rows
  Tensor dweight_;        // (T, k)
  Tensor dbalance_;       // (T, E) of the router's balance_probs
  Tensor dlogits_;        // (T, E)
  Tensor z_softmax_;      // (T, E) sigmoid scoring: softmax(logits), for the z-loss's gradient
};

}  // namespace moe
