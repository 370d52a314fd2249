// Settings of one MoE layer, with the validation that names each bad parameter and its accepted range.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "core/value_range.h"

namespace moe {

enum class Activation { ReLU, GELU, SwiGLU };

// The arithmetic of the matrix products. FP32: everything float32. BF16 (mixed precision): the
// products' inputs (activations, weight copies, output gradients) are bfloat16, their outputs and
// every master weight, gradient and optimizer state float32.
enum class Precision { FP32, BF16 };
const char* to_string(Precision p);  // "fp32" | "bf16"
// The dtype of the matrix products' inputs (core/ops.h's linear ops) under `precision`: float32, or
// bfloat16 for Precision::BF16.
DType product_dtype(Precision precision);
// Which of an over-full expert's choices keep its C slots (docs/routing.md compares the frameworks).
// Token rows are batch-major, so "earlier" means earlier sequences of the micro-batch, then earlier
// positions; each rank ranks only its own tokens.
enum class DropPolicy {
  Position,          // earlier tokens first, a token's k choices counted together (Megatron-Core's
                     // "position"; for k = 1 also Switch's and GShard's order)
  PositionByChoice,  // every token's first choice in token order, then every second choice, and so on
                     // (GShard's and DeepSpeed-MoE's top-2 order)
  Probs,             // the higher full softmax probability first (Megatron-Core ranks by the
                     // renormalised weight instead); ties: the earlier token
};

Activation parse_activation(const std::string& name);  // "relu" | "gelu" | "swiglu"
DropPolicy parse_drop_policy(const std::string& name);  // "position" | "position_by_choice" | "probs"
const char* to_string(Activation a);
const char* to_string(DropPolicy p);

// Which tokens the load-balancing loss's f and P are computed over (docs/routing.md, "Load-balancing
// loss scopes").
enum class AuxLossScope {
  Local,     // each rank's own tokens; the rank losses are averaged (the default)
  Global,    // counts and probabilities summed over all ranks before the product (Megatron's global)
  Sequence,  // each sequence of seq_len tokens on its own; the sequence losses are averaged (DeepSeek-V3's
             // sequence-wise balance loss)
};
AuxLossScope parse_aux_loss_scope(const std::string& name);  // "local" | "global" | "sequence"
const char* to_string(AuxLossScope s);

// How the router turns its logits into per-expert scores (docs/routing.md, "Scoring functions").
enum class ScoreFunction {
  Softmax,  // s = softmax(logits) over the experts (GShard, Switch, Mixtral)
  Sigmoid,  // s_e = sigmoid(logit_e), each expert on its own (DeepSeek-V3)
};
ScoreFunction parse_score_function(const std::string& name);  // "softmax" | "sigmoid"
const char* to_string(ScoreFunction f);

// Who chooses whom (docs/routing.md, "Expert-choice routing", "Hash routing", "Table routing").
enum class Routing {
  TokenChoice,   // each token picks its top_k experts (the default)
  ExpertChoice,  // each expert picks the C highest-scoring tokens of its rank's batch (Zhou et al. 2022)
  Hash,          // static: a fixed, seeded token id -> top_k experts map, weights 1/k (Roller et al. 2021)
  Table,         // static: the token id -> top_k experts map of the file routing_table, weights 1/k
};
Routing parse_routing(const std::string& name);  // "token_choice" | "expert_choice" | "hash" | "table"
const char* to_string(Routing r);
// Hash and table routing: a fixed map from the token's id, no router (no w_gate, no logits, no losses).
inline bool is_static(Routing r) { return r == Routing::Hash || r == Routing::Table; }
// How group-limited routing scores a group of experts for a token (docs/routing.md, "Group-limited
// routing"), from the token's selection scores (scores + aux-free bias) of the group's experts.
enum class GroupScore {
  Top2Sum,  // the sum of the two highest (DeepSeek-V3); the highest alone in a group of one expert
  Max,      // the highest
};
GroupScore parse_group_score(const std::string& name);  // "top2_sum" | "max"
const char* to_string(GroupScore s);
// How many of a group's highest selection scores its group score sums: 2 for Top2Sum, 1 for Max.
int64_t group_score_terms(GroupScore s);

// How the experts' load is balanced.
enum class Balancing {
  AuxLoss,  // the load-balancing loss (aux_loss_coeff) pushes the router towards balance
  AuxFree,  // per-expert biases added to the routing scores, nudged by bias_update_rate per step
};

// The settings of the MoE layers: the keys of the run configuration's `moe:` section, named as it
// spells them, with their defaults (launch/config/train_config.cpp binds each key to its field here),
// plus d_model, init_std, precision, recompute_experts and seq_len, which the model fills in
// (TransformerConfig::moe_layer_config).
struct MoEConfig {
  int64_t num_experts = 8;            // E
  int64_t top_k = 2;                  // k, 1 <= k <= E
  int64_t expert_hidden = 256;        // hidden size of each expert (per matrix; SwiGLU has two input matrices)
  Activation activation = Activation::SwiGLU;
  // Capacity per expert C = max(ceil(capacity_factor * k * T / E), min_capacity).
  // A factor <= 0 means dropless: nothing is dropped and buffers size themselves.
  double capacity_factor = 1.25;      // training
  double eval_capacity_factor = 2.0;  // evaluation
  int64_t min_capacity = 4;
  DropPolicy drop_policy = DropPolicy::Position;
  // expert_choice: expert e takes its C = capacity tokens of highest softmax score (top_k is then the
  // average number of experts per token, in C's formula only); combine weight = that score.
  // hash, table: each token id's top_k experts are fixed (core/moe/static_routing.h), weights 1/k.
  Routing routing = Routing::TokenChoice;
  std::string routing_table{};        // routing = table: the map's file (core/moe/static_routing.h)
  ScoreFunction score_function = ScoreFunction::Softmax;
  bool renormalize = true;            // rescale the k chosen scores to sum to 1
  float routed_scaling_factor = 1.0f; // the combine weights are the (renormalised) chosen scores times this
  float jitter_eps = 0.0f;            // training only: router input multiplied by U(1 - eps, 1 + eps)
  float aux_loss_coeff = -1.0f;       // < 0: the balancing's default, aux_loss_coeff_default()
  AuxLossScope aux_loss_scope = AuxLossScope::Local;
  float z_loss_coeff = -1.0f;         // < 0: the routing's default, z_loss_coeff_default()
  int64_t shared_experts = 0;         // > 0: each MoE layer adds a dense FFN every token passes through
  int64_t shared_expert_hidden = 0;   // hidden size of each shared expert; 0 = expert_hidden
  Balancing balancing = Balancing::AuxLoss;
  double bias_update_rate = 0.001;    // balancing = aux_free: the step of the selection-bias update
  // Group-limited routing: the experts form routing_groups contiguous groups of equal size; each token
  // keeps its top_groups groups by group_score, then chooses its top_k experts inside them. 0 = off;
  // kRoutingGroupsPerRank ("ep" in the run configuration) = one group per expert-parallel rank, which
  // the MoE layer resolves from its exchange.
  int64_t routing_groups = 0;
  int64_t top_groups = 1;
  GroupScore group_score = GroupScore::Top2Sum;
  static constexpr int64_t kRoutingGroupsPerRank = -1;

  int64_t d_model = 0;                // from the model
  float init_std = 0.02f;             // from the model: normal init of the router and expert weights
  Precision precision = Precision::FP32;  // from the model: of the expert GEMMs and the rows exchanged
  bool recompute_experts = false;     // from the model: the backward recomputes the experts' activations
  int64_t seq_len = 0;                // from the model: the layer's T rows are T / seq_len whole sequences
                                      // (0: not known; the sequence aux-loss scope needs it)
  int64_t vocab_size = 0;             // from the model: the token ids static routing maps (0: not known)
  // Experts that grow and shrink during training: the trainer's (launch/config/expert_schedule.h);
  // the layer never reads it. "" = a fixed set of experts.
  std::string schedule = "";

  // The accepted range of each number above: validate() checks them, the run configuration's schema
  // quotes them.
  static constexpr Range kNumExpertsRange = at_least(1);
  static constexpr Range kTopKRange = at_least(1);  // and <= num_experts
  static constexpr Range kExpertHiddenRange = at_least(1);
  static constexpr Range kCapacityFactorRange = any_finite();  // <= 0: dropless
  static constexpr Range kMinCapacityRange = at_least(0);
  static constexpr Range kJitterEpsRange = closed_open(0, 1);
  static constexpr Range kAuxLossCoeffRange = any_finite();  // < 0: the balancing's default
  static constexpr Range kZLossCoeffRange = any_finite();  // < 0: the routing's default
  static constexpr Range kSharedExpertsRange = at_least(0);
  static constexpr Range kSharedExpertHiddenRange = at_least(0);  // 0: expert_hidden
  static constexpr Range kBiasUpdateRateRange = at_least(0);
  static constexpr Range kRoutedScalingFactorRange = above(0);
  static constexpr Range kRoutingGroupsRange = at_least(0);  // or kRoutingGroupsPerRank; divides num_experts
  static constexpr Range kTopGroupsRange = at_least(1);      // <= the groups; times the group size >= top_k

  // Throws InvalidArgument naming the first bad field as the run configuration spells its key
  // ("top_k = 9 ..."), its value and what is accepted; with routing = expert_choice, hash or table, also a
  // setting that does not apply to it (naming both keys). With routing = table it reads routing_table
  // (read_routing_table, core/moe/static_routing.h), whose errors name the file and line.
  void validate() const;
  // Settings that are valid but probably not what was meant, one sentence each (no newline), naming the
  // keys and the alternative; empty when there are none. The trainer prints them at start-up.
  std::vector<std::string> warnings() const;
  // The number of routing groups with `ep` expert-parallel ranks: routing_groups, or ep for
  // kRoutingGroupsPerRank; 0 = group-limited routing is off.
  int64_t routing_groups_for(int64_t ep) const {
    return routing_groups == kRoutingGroupsPerRank ? ep : routing_groups;
  }
  // Throws InvalidArgument unless routing_groups_for(ep) groups split the experts as group-limited
  // routing needs (each group the same size, top_groups <= the groups, top_groups groups holding at
  // least top_k experts), naming the keys; validate() checks a number of groups, this the "ep" value
  // once the expert-parallel size is known.
  void validate_routing_groups(int64_t ep) const;
  // What a negative aux_loss_coeff stands for: 0.01 with balancing = aux_loss; 0 with aux_free,
  // whose biases balance the load without a loss (DeepSeek-V3), so a loss on top is opt-in; 0 with
  // routing = expert_choice, where every expert takes exactly C tokens (no loss); 0 with static routing
  // (hash, table), which has no router for a loss to train.
  float aux_loss_coeff_default() const {
    return balancing == Balancing::AuxFree || routing == Routing::ExpertChoice || is_static(routing) ? 0.0f : 0.01f;
  }
  // The weight of the load-balancing loss: aux_loss_coeff, or its default when negative.
  float aux_loss_weight() const { return aux_loss_coeff < 0 ? aux_loss_coeff_default() : aux_loss_coeff; }
  // What a negative z_loss_coeff stands for: 0.001, or 0 with static routing (no logits).
  float z_loss_coeff_default() const { return is_static(routing) ? 0.0f : 0.001f; }
  // The weight of the router z-loss: z_loss_coeff, or its default when negative.
  float z_loss_weight() const { return z_loss_coeff < 0 ? z_loss_coeff_default() : z_loss_coeff; }
  // The routing in words, for the routing report and TensorBoard: "token_choice, softmax scores",
  // "token_choice, sigmoid scores, 4 groups, top 2 (top2_sum)", "expert_choice, softmax scores",
  // "hash (seeded token id -> 2 experts, weights 1/k)", "table tables/map.txt (token id -> 2 experts,
  // weights 1/k)". routing_groups = ep reads "one group per expert-parallel rank".
  std::string routing_description() const;
  // Number of columns of the first expert matrix: expert_hidden, or 2 * expert_hidden for SwiGLU ([gate | up]).
  int64_t expert_in_cols() const { return activation == Activation::SwiGLU ? 2 * expert_hidden : expert_hidden; }
  // Hidden size of the shared-expert FFN: shared_experts * shared_expert_hidden (0: expert_hidden); 0
  // without shared experts.
  int64_t shared_hidden() const {
    return shared_experts * (shared_expert_hidden > 0 ? shared_expert_hidden : expert_hidden);
  }
  bool operator==(const MoEConfig&) const = default;
};

// C = max(ceil(capacity_factor * top_k * num_tokens / num_experts), min_capacity) for T tokens, computed
// exactly on capacity_factor's shortest round-trip decimal (the "1.1" the user wrote, not the binary
// double just above it); -1 when capacity_factor <= 0 (dropless). Saturates at INT64_MAX.
int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                        int64_t min_capacity);

}  // namespace moe
