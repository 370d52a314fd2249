// The MoE layer: the stages of core/moe/*.h and the expert-parallel exchange wired together, forward and backward.
#include "core/moe/moe_layer.h"

#include <algorithm>

#include "core/check.h"
#include "core/ops.h"
#include "core/parameter_names.h"
#include "core/moe/static_routing.h"
#include "core/random.h"
#include "core/timer.h"

namespace moe {

namespace {
// x (T, d).
void require_finite(const Tensor& x) {
  const int64_t i = first_nonfinite(x);
  if (i < 0) return;
  const int64_t cols = x.dim(1), token = i / cols, column = i % cols;
  const float value = x.rows(token, token + 1).to(Device::CPU).f32()[column];  // for the message only
  throw InvalidArgument(detail::concat("MoE layer input x has a non-finite value (", value, ") at token ", token,
                                       ", column ", column, "; inputs must be finite"));
}
}  // namespace

MoELayer::MoELayer(const MoEConfig& cfg, uint64_t seed, std::unique_ptr<ExpertExchange> exchange, Device device)
    : cfg_(cfg), seed_(seed), exchange_(std::move(exchange)) {
  cfg_.validate();
  const int64_t d = cfg_.d_model, E = cfg_.num_experts, h = cfg_.expert_hidden, in_cols = cfg_.expert_in_cols();
  if (exchange_ == nullptr) exchange_ = std::make_unique<LocalExpertExchange>(E);
  MOE_REQUIRE(exchange_->num_experts() == E, "the expert exchange was built for ", exchange_->num_experts(),
              " experts, but the MoE layer has num_experts = ", E);
  const int64_t first = first_expert(), local = local_experts();
  cfg_.validate_routing_groups(E / local);  // "ep": one routing group per rank of the exchange
  cfg_.routing_groups = cfg_.routing_groups_for(E / local);
  if (is_static(cfg_.routing)) {
    routes_ = Tensor::from_ints({cfg_.vocab_size, cfg_.top_k}, static_routes(cfg_, seed)).to(device);
  } else {
    weights.w_gate = random_normal({d, E}, cfg_.init_std, stream_id(seed, names::kWGate), device);
    grads.w_gate = Tensor::zeros(weights.w_gate.shape(), DType::F32, device);
  }
  // Offsetting the stream by the first local expert's elements gives expert e the same values on
  // whichever rank holds it.
  weights.w_in =
      random_normal({local, d, in_cols}, cfg_.init_std, stream_id(seed, names::kWIn), device, first * d * in_cols);
  weights.w_out = random_normal({local, h, d}, cfg_.init_std, stream_id(seed, names::kWOut), device, first * h * d);
  grads.w_in = Tensor::zeros(weights.w_in.shape(), DType::F32, device);
  grads.w_out = Tensor::zeros(weights.w_out.shape(), DType::F32, device);
  selection_bias = Tensor::zeros({E}, DType::F32, device);
}

void MoELayer::share_expert_activations(std::shared_ptr<ExpertActivations> scratch) {
  MOE_ASSERT(cfg_.recompute_experts && scratch != nullptr, "only layers that recompute share their activations");
  activations_ = std::move(scratch);
}

void MoELayer::register_parameters(ParameterRegistry& registry, const std::string& prefix) {
  if (weights.w_gate.defined())
    registry.add(names::tensor_name(prefix, names::kWGate), weights.w_gate, grads.w_gate, ParamKind::Dense);
  registry.add(names::tensor_name(prefix, names::kWIn), weights.w_in, grads.w_in, ParamKind::Expert);
  registry.add(names::tensor_name(prefix, names::kWOut), weights.w_out, grads.w_out, ParamKind::Expert);
}

void MoELayer::forward(Tensor& y, const Tensor& x, bool training, const Tensor* token_ids) {
  require_rank("MoELayer::forward", "x", x, 2);
  MOE_REQUIRE(x.dim(1) == cfg_.d_model, "MoELayer::forward: x has shape ", to_string(x.shape()),
              ", expected (T, d_model = ", cfg_.d_model, ")");
  require_shape("MoELayer::forward", "y", y, x.shape());
  const int64_t T = x.dim(0), d = cfg_.d_model, E = cfg_.num_experts;
  const bool per_sequence = cfg_.aux_loss_scope == AuxLossScope::Sequence;
  MOE_REQUIRE(!per_sequence || T % cfg_.seq_len == 0, "MoELayer::forward: aux_loss_scope = sequence needs whole "
              "sequences, but x has ", T, " tokens, not a multiple of seq_len = ", cfg_.seq_len);
  const bool static_routing = is_static(cfg_.routing);
  MOE_REQUIRE(!static_routing || token_ids != nullptr, "MoELayer::forward: routing = ", to_string(cfg_.routing),
              " routes each token by its id, but no token_ids were given");
  if (static_routing) require_shape("MoELayer::forward", "token_ids", *token_ids, {T});
  require_finite(x);
  const Device device = x.device();
  x_ = x;
  MoEPhaseTimes& time = stats_.forward_time;
  time = MoEPhaseTimes{};
  LapTimer timer(device);  // on a GPU, each phase waits for its kernels

  // Noise differs per call and per rank, and layers with nearby seeds never share it.
  const uint64_t jitter_stream =
      mix64(stream_id(seed_, "jitter") ^ mix64(calls_++) ^ mix64(~static_cast<uint64_t>(exchange_->rank())));
  // The router computes in float32 in every precision: the top-k choice and the balancing losses
  // turn on small differences between scores that bfloat16's 8-bit significand would blur or flip, and
  // its (T, d) x (d, E) product is a small part of the layer's work.
  if (static_routing)
    static_router_forward(router_, routes_, *token_ids);
  else
    router_forward(router_, x, weights.w_gate, cfg_, training, jitter_stream, 0, &selection_bias);
  timer.lap(&time.router);

  // Capacity applies per (source rank, expert): each rank plans its own T tokens.
  const double factor = training ? cfg_.capacity_factor : cfg_.eval_capacity_factor;
  int64_t capacity = expert_capacity(factor, T, cfg_.top_k, E, cfg_.min_capacity);
  // The plan is made on the host: this layer call's one device-to-host copy (a no-op on the CPU); its
  // index tensors go back to the device.
  const bool expert_choice = cfg_.routing == Routing::ExpertChoice;
  if (expert_choice) {  // each expert chooses among this rank's T tokens, as capacity applies per rank
    capacity = std::min(capacity, T);
    expert_choice_route(router_, capacity);
    plan_ = make_expert_choice_plan(router_.chosen_token.to(Device::CPU), T);
  } else {
    plan_ = make_dispatch_plan(router_.expert.to(Device::CPU), router_.probs.to(Device::CPU), E, capacity,
                               cfg_.drop_policy);
  }
  plan_.source_token = plan_.source_token.to(device);
  plan_.slot = plan_.slot.to(device);
  const int64_t M = plan_.num_kept();
  const DType rows = rows_dtype();
  // In bf16 runs x is rounded once (T rows) and gathered as bfloat16 rows (M ~ k T of them).
  resize_on(x_perm_, {M, d}, device, rows);
  gather_rows(x_perm_, as_dtype(x, x_rows_, rows), plan_.source_token);
  timer.lap(&time.permute);

  expert_offset_ = &exchange_->plan(plan_, time);
  expert_in_ = &exchange_->to_experts(x_perm_, x_local_, time);
  resize_on(expert_out_, {M, d}, device, rows);
  Tensor& y_rows = exchange_->expert_output(expert_out_, y_local_);
  timer.skip();  // the exchange timed itself
  w_in_product_ = &as_dtype(weights.w_in, w_in_bf16_, rows);
  w_out_product_ = &as_dtype(weights.w_out, w_out_bf16_, rows);
  // The products write float32; in bf16 runs the output rows are rounded to bfloat16 to travel back,
  // also when nothing moves, so the arithmetic is the same whatever the expert-parallel layout.
  if (rows != DType::F32) resize_on(y_experts_, y_rows.shape(), device);
  Tensor& y_experts = rows == DType::F32 ? y_rows : y_experts_;
  experts_forward(y_experts, *activations_, *expert_in_, *expert_offset_, *w_in_product_, *w_out_product_,
                  cfg_.activation);
  if (rows != DType::F32) convert(y_rows, y_experts);
  timer.lap(&time.experts);
  exchange_->from_experts(y_rows, expert_out_, time);
  timer.skip();

  combine_rows_ = &as_dtype(expert_out_, expert_out_f32_, DType::F32);
  combine_forward(y, *combine_rows_, plan_.slot, router_.weight);
  timer.lap(&time.combine);

  // The sequence scope: one group of f and P per sequence (an empty batch is one empty group: no loss).
  // Expert choice and static routing have no load-balancing loss (MoEConfig::validate): no terms, a loss
  // of 0 and no gradient.
  balance_ = expert_choice || static_routing ? LoadBalanceTerms{}
                           : load_balance_terms(router_.balance_probs, router_.expert,
                                                per_sequence && T > 0 ? T / cfg_.seq_len : 1);
  if (cfg_.aux_loss_scope == AuxLossScope::Global) exchange_->all_reduce_balance_terms(balance_);
  stats_.tokens = T;
  stats_.capacity = capacity;
  stats_.routed = plan_.routed;
  stats_.kept = plan_.kept;
  stats_.kept_total = M;
  stats_.dropped_total = plan_.num_dropped();
  stats_.aux_loss = load_balancing_loss(balance_, cfg_.aux_loss_weight());
  // Static routing has no logits: no z-loss (its weight is 0, MoEConfig::validate).
  stats_.z_loss = static_routing ? 0.0 : z_loss_forward(router_.logits, cfg_.z_loss_weight(), static_cast<double>(T));
  timer.lap(&time.losses);
}

void MoELayer::backward(Tensor& dx, const Tensor& dy) {
  MOE_REQUIRE(x_.defined(), "MoELayer::backward called before forward");
  require_shape("MoELayer::backward", "dy", dy, x_.shape());
  require_shape("MoELayer::backward", "dx", dx, x_.shape());
  const int64_t T = x_.dim(0), d = cfg_.d_model, E = cfg_.num_experts, k = plan_.top_k;  // E for expert choice
  const int64_t M = plan_.num_kept();
  const Device device = dy.device();
  MoEPhaseTimes& time = stats_.backward_time;
  time = MoEPhaseTimes{};
  LapTimer timer(device);  // on a GPU, each phase waits for its kernels

  resize_zeroed(d_expert_out_, {M, d}, device);
  const bool static_routing = is_static(cfg_.routing);  // constant weights: no router to reach
  resize_zeroed(dweight_, {T, k}, device);
  combine_backward(&d_expert_out_, static_routing ? nullptr : &dweight_, dy, *combine_rows_, plan_.slot,
                   router_.weight);
  timer.lap(&time.combine);

  // The forward's two directions swap roles: output gradients travel to the experts (as rows: bfloat16
  // in bf16 runs, which the products read), input gradients travel back (rounded to rows likewise).
  const DType rows = rows_dtype();
  const Tensor& d_experts = exchange_->to_experts(as_dtype(d_expert_out_, d_expert_rows_, rows), d_local_, time);
  resize_on(dx_perm_, {M, d}, device, rows);
  Tensor& dx_rows = exchange_->expert_output(dx_perm_, dx_local_);
  timer.skip();
  if (rows != DType::F32) resize_on(dx_experts_, dx_rows.shape(), device);
  Tensor& dx_experts = rows == DType::F32 ? dx_rows : dx_experts_;
  dx_experts.zero();
  if (cfg_.recompute_experts)  // the scratch holds a later layer's activations, or nothing kept
    experts_activations(*activations_, *expert_in_, *expert_offset_, *w_in_product_, cfg_.expert_hidden,
                        cfg_.activation);
  experts_backward(&dx_experts, &grads.w_in, &grads.w_out, d_experts, *expert_in_, *expert_offset_, *w_in_product_,
                   *w_out_product_, *activations_, cfg_.activation);
  if (rows != DType::F32) convert(dx_rows, dx_experts);
  timer.lap(&time.experts);
  exchange_->from_experts(dx_rows, dx_perm_, time);
  timer.skip();
  scatter_add_rows(dx, dx_perm_, plan_.source_token);
  timer.lap(&time.permute);
  if (static_routing) return;

  // In the global scope every rank's loss includes the one global value, and the gradient sync
  // divides the sum over ranks by the world size: each rank contributes its tokens' share of the
  // global loss's gradient scaled by the world size.
  const bool global_scope = cfg_.aux_loss_scope == AuxLossScope::Global;
  const double aux_dloss = global_scope ? static_cast<double>(balance_.ranks) : 1.0;
  resize_zeroed(dbalance_, {T, E}, device);
  resize_zeroed(dlogits_, {T, E}, device);
  load_balancing_loss_backward(dbalance_, balance_, cfg_.aux_loss_weight(), aux_dloss);
  // The z-loss is lse(logits)^2 whatever the scoring; its gradient needs softmax(logits), which the
  // router holds only with softmax scores.
  const Tensor* softmax_probs = &router_.probs;
  if (cfg_.score_function == ScoreFunction::Sigmoid) {
    resize_on(z_softmax_, {T, E}, device);
    softmax_forward(z_softmax_, router_.logits);
    softmax_probs = &z_softmax_;
  }
  z_loss_backward(dlogits_, router_.logits, *softmax_probs, cfg_.z_loss_weight(), static_cast<double>(T), 1.0);
  timer.lap(&time.losses);
  router_backward(&dx, &grads.w_gate, dbalance_, dlogits_, dweight_, weights.w_gate, router_, cfg_);
  timer.lap(&time.router);
}

}  // namespace moe
