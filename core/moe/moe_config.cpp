// MoE layer settings: parsing, validation and the capacity formula.
#include "core/moe/moe_config.h"

#include <cmath>

#include "core/check.h"

namespace moe {

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "gelu") return Activation::GELU;
  if (name == "swiglu") return Activation::SwiGLU;
  throw InvalidArgument("activation '" + name + "' is not one of: relu, gelu, swiglu");
}

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "position") return DropPolicy::Position;
  if (name == "probs") return DropPolicy::Probs;
  throw InvalidArgument("drop_policy '" + name + "' is not one of: position, probs");
}

const char* to_string(Activation a) {
  switch (a) {
    case Activation::ReLU: return "relu";
    case Activation::GELU: return "gelu";
    case Activation::SwiGLU: return "swiglu";
  }
  return "?";
}

const char* to_string(DropPolicy p) { return p == DropPolicy::Position ? "position" : "probs"; }

AuxLossScope parse_aux_loss_scope(const std::string& name) {
  if (name == "local") return AuxLossScope::Local;
  if (name == "global") return AuxLossScope::Global;
  throw InvalidArgument("aux_loss_scope '" + name + "' is not one of: local, global");
}

const char* to_string(AuxLossScope s) { return s == AuxLossScope::Local ? "local" : "global"; }

void MoEConfig::validate() const {
  MOE_REQUIRE(d_model >= 1, "d_model = ", d_model, " must be >= 1");
  MOE_REQUIRE(hidden >= 1, "hidden = ", hidden, " must be >= 1");
  MOE_REQUIRE(num_experts >= 1, "num_experts = ", num_experts, " must be >= 1");
  MOE_REQUIRE(top_k >= 1 && top_k <= num_experts, "top_k = ", top_k, " must be in [1, num_experts = ",
              num_experts, "]");
  MOE_REQUIRE(std::isfinite(capacity_factor_train), "capacity_factor_train = ", capacity_factor_train,
              " must be finite (<= 0 means dropless)");
  MOE_REQUIRE(std::isfinite(capacity_factor_eval), "capacity_factor_eval = ", capacity_factor_eval,
              " must be finite (<= 0 means dropless)");
  MOE_REQUIRE(min_capacity >= 0, "min_capacity = ", min_capacity, " must be >= 0");
  MOE_REQUIRE(std::isfinite(jitter_eps) && jitter_eps >= 0.0f && jitter_eps < 1.0f, "jitter_eps = ",
              jitter_eps, " must be in [0, 1)");
  MOE_REQUIRE(std::isfinite(aux_loss_coeff) && aux_loss_coeff >= 0.0f, "aux_loss_coeff = ",
              aux_loss_coeff, " must be finite and >= 0");
  MOE_REQUIRE(std::isfinite(z_loss_coeff) && z_loss_coeff >= 0.0f, "z_loss_coeff = ", z_loss_coeff,
              " must be finite and >= 0");
  MOE_REQUIRE(std::isfinite(init_std) && init_std > 0.0f, "init_std = ", init_std,
              " must be finite and > 0");
}

int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                        int64_t min_capacity) {
  if (capacity_factor <= 0.0) return -1;
  // The product is formed in double and rounded up; the tiny epsilon keeps an exact integer such as
  // 1.25 * 2 * 4096 / 8 = 1280 from becoming 1281 through rounding of the factor.
  double c = std::ceil(capacity_factor * static_cast<double>(top_k * num_tokens) /
                           static_cast<double>(num_experts) - 1e-9);
  return std::max<int64_t>(static_cast<int64_t>(c), min_capacity);
}

}  // namespace moe
