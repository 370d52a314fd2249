// Settings of one MoE layer, with the validation that names each bad parameter and its accepted range.
#pragma once

#include <cstdint>
#include <string>

namespace moe {

enum class Activation { ReLU, GELU, SwiGLU };
enum class DropPolicy {
  Position,  // earlier tokens keep their slot (GShard, Switch)
  Probs,     // choices with the higher router probability keep their slot
};

Activation parse_activation(const std::string& name);  // "relu" | "gelu" | "swiglu"
DropPolicy parse_drop_policy(const std::string& name);  // "position" | "probs"
const char* to_string(Activation a);
const char* to_string(DropPolicy p);

// Which tokens the load-balancing loss's f and P are computed over when ranks run in parallel.
enum class AuxLossScope {
  Local,   // each rank's own tokens; the rank losses are averaged (the default)
  Global,  // counts and probabilities summed over all ranks before the product (Megatron's global)
};
AuxLossScope parse_aux_loss_scope(const std::string& name);  // "local" | "global"
const char* to_string(AuxLossScope s);

struct MoEConfig {
  int64_t d_model = 0;
  int64_t hidden = 0;        // expert FFN hidden size (per matrix; SwiGLU has two input matrices)
  int64_t num_experts = 0;   // E
  int64_t top_k = 0;         // k, 1 <= k <= E
  Activation activation = Activation::GELU;
  // Capacity per expert C = max(ceil(capacity_factor * k * T / E), min_capacity).
  // A factor <= 0 means dropless: nothing is dropped and buffers size themselves.
  double capacity_factor_train = 1.25;
  double capacity_factor_eval = 2.0;
  int64_t min_capacity = 4;
  DropPolicy drop_policy = DropPolicy::Position;
  bool renormalize = true;    // rescale the k chosen probabilities to sum to 1
  float jitter_eps = 0.0f;    // training only: router input multiplied by U(1 - eps, 1 + eps)
  float aux_loss_coeff = 0.01f;
  AuxLossScope aux_loss_scope = AuxLossScope::Local;
  float z_loss_coeff = 0.001f;
  float init_std = 0.02f;     // normal init of the router and expert weights

  // Throws InvalidArgument naming the first bad parameter, its value and the accepted range.
  void validate() const;
  // Number of columns of the first expert matrix: hidden, or 2 * hidden for SwiGLU ([gate | up]).
  int64_t expert_in_cols() const { return activation == Activation::SwiGLU ? 2 * hidden : hidden; }
};

// C for T tokens, or -1 when capacity_factor <= 0 (dropless).
int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                        int64_t min_capacity);

}  // namespace moe
