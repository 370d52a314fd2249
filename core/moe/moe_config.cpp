// MoE layer settings: parsing, validation and the capacity formula.
#include "core/moe/moe_config.h"

#include <algorithm>
#include <charconv>
#include <limits>

#include "core/check.h"
#include "core/moe/static_routing.h"

namespace moe {

Activation parse_activation(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "gelu") return Activation::GELU;
  if (name == "swiglu") return Activation::SwiGLU;
  throw InvalidArgument("activation '" + name + "' is not one of: relu, gelu, swiglu");
}

DropPolicy parse_drop_policy(const std::string& name) {
  if (name == "position") return DropPolicy::Position;
  if (name == "position_by_choice") return DropPolicy::PositionByChoice;
  if (name == "probs") return DropPolicy::Probs;
  throw InvalidArgument("drop_policy '" + name + "' is not one of: position, position_by_choice, probs");
}

const char* to_string(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

DType product_dtype(Precision precision) { return precision == Precision::BF16 ? DType::BF16 : DType::F32; }

const char* to_string(Activation a) {
  switch (a) {
    case Activation::ReLU: return "relu";
    case Activation::GELU: return "gelu";
    case Activation::SwiGLU: return "swiglu";
  }
  return "?";
}

const char* to_string(DropPolicy p) {
  switch (p) {
    case DropPolicy::Position: return "position";
    case DropPolicy::PositionByChoice: return "position_by_choice";
    case DropPolicy::Probs: return "probs";
  }
  return "?";
}

AuxLossScope parse_aux_loss_scope(const std::string& name) {
  if (name == "local") return AuxLossScope::Local;
  if (name == "global") return AuxLossScope::Global;
  if (name == "sequence") return AuxLossScope::Sequence;
  throw InvalidArgument("aux_loss_scope '" + name + "' is not one of: local, global, sequence");
}

const char* to_string(AuxLossScope s) {
  switch (s) {
    case AuxLossScope::Local: return "local";
    case AuxLossScope::Global: return "global";
    case AuxLossScope::Sequence: return "sequence";
  }
  return "?";
}

ScoreFunction parse_score_function(const std::string& name) {
  if (name == "softmax") return ScoreFunction::Softmax;
  if (name == "sigmoid") return ScoreFunction::Sigmoid;
  throw InvalidArgument("score_function '" + name + "' is not one of: softmax, sigmoid");
}

const char* to_string(ScoreFunction f) { return f == ScoreFunction::Sigmoid ? "sigmoid" : "softmax"; }

Routing parse_routing(const std::string& name) {
  if (name == "token_choice") return Routing::TokenChoice;
  if (name == "expert_choice") return Routing::ExpertChoice;
  if (name == "hash") return Routing::Hash;
  if (name == "table") return Routing::Table;
  throw InvalidArgument("routing '" + name + "' is not one of: token_choice, expert_choice, hash, table");
}

const char* to_string(Routing r) {
  switch (r) {
    case Routing::TokenChoice: return "token_choice";
    case Routing::ExpertChoice: return "expert_choice";
    case Routing::Hash: return "hash";
    case Routing::Table: return "table";
  }
  return "?";
}

namespace {
// routing_groups as the run configuration spells it: a number, or "ep".
std::string routing_groups_text(const MoEConfig& c) {
  return c.routing_groups == MoEConfig::kRoutingGroupsPerRank ? "ep" : std::to_string(c.routing_groups);
}

// The settings that have no meaning when experts choose their tokens (docs/routing.md, "Expert-choice
// routing"): refused rather than ignored, so a config never says one thing and runs another.
void require_expert_choice_compatible(const MoEConfig& c) {
  const char* ec = "routing = expert_choice";
  MOE_REQUIRE(c.capacity_factor > 0 && c.eval_capacity_factor > 0, ec,
              " needs capacity_factor > 0 and eval_capacity_factor > 0 (each expert takes C = ceil(factor * top_k "
              "* tokens / num_experts) tokens; it has no dropless mode), but capacity_factor = ", c.capacity_factor,
              " and eval_capacity_factor = ", c.eval_capacity_factor);
  MOE_REQUIRE(c.score_function == ScoreFunction::Softmax, ec,
              " scores with softmax (Zhou et al. 2022), but score_function = ", to_string(c.score_function));
  MOE_REQUIRE(c.drop_policy == DropPolicy::Position, ec, " does not use drop_policy (each expert keeps its C "
              "highest-scoring tokens; nothing is dropped), but drop_policy = ", to_string(c.drop_policy),
              "; leave drop_policy unset");
  MOE_REQUIRE(c.routed_scaling_factor == 1.0f, ec, " weights each output by its softmax score, but "
              "routed_scaling_factor = ", c.routed_scaling_factor, "; leave routed_scaling_factor unset (1)");
  MOE_REQUIRE(c.balancing == Balancing::AuxLoss, ec, " is balanced by construction (every expert takes C "
              "tokens), but balancing = aux_free; leave balancing unset");
  MOE_REQUIRE(!(c.aux_loss_coeff > 0), ec, " has no load-balancing loss (every expert takes C tokens), but "
              "aux_loss_coeff = ", c.aux_loss_coeff, "; leave aux_loss_coeff unset or set it to 0");
  MOE_REQUIRE(c.aux_loss_scope == AuxLossScope::Local, ec, " has no load-balancing loss, but aux_loss_scope = ",
              to_string(c.aux_loss_scope), "; leave aux_loss_scope unset");
  MOE_REQUIRE(c.routing_groups == 0, ec, " has no token choice for routing groups to limit, but routing_groups = ",
              routing_groups_text(c),
              "; leave routing_groups unset (0)");
}

// The settings that have no meaning without a router (docs/routing.md, "Hash routing"): refused rather
// than ignored, naming both keys.
void require_static_compatible(const MoEConfig& c) {
  const std::string r = std::string("routing = ") + to_string(c.routing);
  const char* unset = "; leave it unset";
  MOE_REQUIRE(c.vocab_size >= 1, r, " maps token ids to experts and needs the model's vocab_size (>= 1), but "
              "vocab_size = ", c.vocab_size);
  MOE_REQUIRE(c.routing != Routing::Table || !c.routing_table.empty(), r, " needs routing_table, the file of "
              "'token id: experts' lines (docs/routing.md, \"Table routing\")");
  MOE_REQUIRE(c.score_function == ScoreFunction::Softmax, r, " has no router scores, but score_function = ",
              to_string(c.score_function), unset);
  MOE_REQUIRE(c.drop_policy != DropPolicy::Probs, r, " has no router probabilities to rank by, but drop_policy = "
              "probs; accepted: position, position_by_choice");
  MOE_REQUIRE(c.routed_scaling_factor == 1.0f, r, " weights each of a token's top_k experts 1/k, but "
              "routed_scaling_factor = ", c.routed_scaling_factor, unset, " (1)");
  MOE_REQUIRE(c.jitter_eps == 0.0f, r, " has no router input to jitter, but jitter_eps = ", c.jitter_eps, unset,
              " (0)");
  MOE_REQUIRE(c.balancing == Balancing::AuxLoss, r, " has no router for biases to steer, but balancing = aux_free",
              unset);
  MOE_REQUIRE(!(c.aux_loss_coeff > 0), r, " has no router for a load-balancing loss to train, but aux_loss_coeff = ",
              c.aux_loss_coeff, "; leave aux_loss_coeff unset or set it to 0");
  MOE_REQUIRE(c.aux_loss_scope == AuxLossScope::Local, r, " has no load-balancing loss, but aux_loss_scope = ",
              to_string(c.aux_loss_scope), unset);
  MOE_REQUIRE(!(c.z_loss_coeff > 0), r, " has no router logits for a z-loss, but z_loss_coeff = ", c.z_loss_coeff,
              "; leave z_loss_coeff unset or set it to 0");
  MOE_REQUIRE(c.routing_groups == 0, r, " has no router choice for routing groups to limit, but routing_groups = ",
              routing_groups_text(c),
              "; leave routing_groups unset (0)");
  if (c.routing == Routing::Table) read_routing_table(c.routing_table, c.vocab_size, c.num_experts, c.top_k);
}
}  // namespace

GroupScore parse_group_score(const std::string& name) {
  if (name == "top2_sum") return GroupScore::Top2Sum;
  if (name == "max") return GroupScore::Max;
  throw InvalidArgument("group_score '" + name + "' is not one of: top2_sum, max");
}

const char* to_string(GroupScore s) { return s == GroupScore::Max ? "max" : "top2_sum"; }

int64_t group_score_terms(GroupScore s) { return s == GroupScore::Max ? 1 : 2; }

namespace {
constexpr const char* kRoutingGroupsAccepted =
    "0 (off), a divisor of num_experts, or ep (one group per expert-parallel rank)";

// The group-limited routing checks for G groups; `groups_text` names where G came from.
void require_routing_groups(const MoEConfig& c, int64_t G, const std::string& groups_text) {
  MOE_REQUIRE(G >= 1 && c.num_experts % G == 0, groups_text, " does not divide num_experts = ", c.num_experts,
              "; accepted for routing_groups: ", kRoutingGroupsAccepted);
  MOE_REQUIRE(c.top_groups <= G, "top_groups = ", c.top_groups, " must be <= the ", G, " groups of ", groups_text);
  MOE_REQUIRE(c.top_groups * (c.num_experts / G) >= c.top_k, "top_groups = ", c.top_groups, " groups of ",
              c.num_experts / G, " experts (", groups_text, ", num_experts = ", c.num_experts,
              ") hold fewer than top_k = ", c.top_k,
              " experts; accepted: top_groups * num_experts / routing_groups >= top_k");
}
}  // namespace

void MoEConfig::validate_routing_groups(int64_t ep) const {
  if (routing_groups == kRoutingGroupsPerRank)
    require_routing_groups(*this, ep, detail::concat("routing_groups = ep (", ep, " expert-parallel ranks)"));
  else if (routing_groups != 0)
    require_routing_groups(*this, routing_groups, detail::concat("routing_groups = ", routing_groups));
}

void MoEConfig::validate() const {
  require_in_range("num_experts", num_experts, kNumExpertsRange);
  require_in_range("top_k", top_k, kTopKRange);
  MOE_REQUIRE(top_k <= num_experts, "top_k = ", top_k, " must be <= num_experts = ", num_experts);
  require_in_range("expert_hidden", expert_hidden, kExpertHiddenRange);
  require_in_range("capacity_factor", capacity_factor, kCapacityFactorRange);
  require_in_range("eval_capacity_factor", eval_capacity_factor, kCapacityFactorRange);
  require_in_range("min_capacity", min_capacity, kMinCapacityRange);
  require_in_range("jitter_eps", jitter_eps, kJitterEpsRange);
  require_in_range("aux_loss_coeff", aux_loss_coeff, kAuxLossCoeffRange);
  require_in_range("z_loss_coeff", z_loss_coeff, kZLossCoeffRange);
  require_in_range("shared_experts", shared_experts, kSharedExpertsRange);
  require_in_range("shared_expert_hidden", shared_expert_hidden, kSharedExpertHiddenRange);
  require_in_range("bias_update_rate", bias_update_rate, kBiasUpdateRateRange);
  require_in_range("routed_scaling_factor", routed_scaling_factor, kRoutedScalingFactorRange);
  require_in_range("top_groups", top_groups, kTopGroupsRange);
  if (routing_groups != kRoutingGroupsPerRank) {  // "ep" is checked once ep is known
    require_in_range("routing_groups", routing_groups, kRoutingGroupsRange);
    validate_routing_groups(0);
  }
  MOE_REQUIRE(aux_loss_scope != AuxLossScope::Sequence || seq_len >= 1,
              "aux_loss_scope = sequence needs the model's seq_len (>= 1), but seq_len = ", seq_len);
  if (routing == Routing::ExpertChoice) require_expert_choice_compatible(*this);
  if (is_static(routing)) require_static_compatible(*this);
  MOE_REQUIRE(routing == Routing::Table || routing_table.empty(), "routing_table = ", routing_table,
              " is read only with routing = table, but routing = ", to_string(routing), "; leave routing_table unset");
  require_in_range("d_model", d_model, at_least(1));
  require_in_range("init_std", init_std, above(0));
}

std::string MoEConfig::routing_description() const {
  const std::string experts = detail::concat(top_k, top_k == 1 ? " expert" : " experts", ", weights 1/k)");
  if (routing == Routing::Hash) return "hash (seeded token id -> " + experts;
  if (routing == Routing::Table) return "table " + routing_table + " (token id -> " + experts;
  std::string text = detail::concat(to_string(routing), ", ", to_string(score_function), " scores");
  if (routing_groups == kRoutingGroupsPerRank)
    text += detail::concat(", one group per expert-parallel rank, top ", top_groups, " (", to_string(group_score), ")");
  else if (routing_groups > 0)
    text += detail::concat(", ", routing_groups, " groups, top ", top_groups, " (", to_string(group_score), ")");
  return text;
}

std::vector<std::string> MoEConfig::warnings() const {
  std::vector<std::string> out;
  if (top_k == 1 && renormalize)
    out.push_back(
        "moe.top_k = 1 with moe.renormalize = true makes every combine weight p / p = 1, so the task loss gives "
        "the router no gradient (only the load-balancing and z losses train it); set moe.renormalize = false "
        "for Switch Transformer's weight w = p");
  return out;
}

namespace {

// A positive finite double as mantissa * 10^exponent: the shortest decimal that reads back as the same
// double (std::to_chars' round-trip guarantee). A decimal written with at most 15 significant digits is
// recovered exactly: two such decimals in the same decade differ by at least 1e-15 of their size, more
// than the spacing of doubles (at most 2.2e-16 of their size), so no shorter or different decimal rounds
// to the same double (the reason DBL_DIG is 15). "1.1" gives 11 * 10^-1, although the double 1.1 is 1.100000000000000088817841970012523...
struct Decimal {
  int64_t mantissa;  // at most 17 digits
  int exponent;
};

Decimal shortest_decimal(double x) {
  char buf[40];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  MOE_ASSERT(r.ec == std::errc(), "a double always fits in 40 characters");
  Decimal d{0, 0};
  int fraction_digits = 0;
  bool after_point = false;
  const char* c = buf;
  for (; *c != 'e'; ++c) {  // "D.DDDDe+XX" or "De+XX"
    if (*c == '.') {
      after_point = true;
      continue;
    }
    d.mantissa = d.mantissa * 10 + (*c - '0');
    fraction_digits += after_point;
  }
  int exponent = 0;
  std::from_chars(c + (c[1] == '+' ? 2 : 1), r.ptr, exponent);
  d.exponent = exponent - fraction_digits;
  return d;
}

}  // namespace

int64_t expert_capacity(double capacity_factor, int64_t num_tokens, int64_t top_k, int64_t num_experts,
                        int64_t min_capacity) {
  if (capacity_factor <= 0.0) return -1;
  // C = ceil(capacity_factor * k * T / E), computed exactly on the decimal the user wrote:
  // capacity_factor = m * 10^p gives C = ceil(m * k * T * 10^p / E) in 128-bit integers. Rounding the
  // product in double instead is wrong both ways: the double 1.1 lies above 1.1, so ceil(1.1 * 10)
  // would be 12; and once the product passes about 2^24 its rounding error exceeds any fixed epsilon
  // (1.1 * 2 * 83886120 / 8 = 23068683 exactly, which double arithmetic minus 1e-9 made 23068684).
  __extension__ typedef __int128 int128;  // a GCC and Clang type: -Wpedantic needs the marker
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const Decimal cf = shortest_decimal(capacity_factor);
  int128 num = static_cast<int128>(cf.mantissa) * (top_k * num_tokens);  // < 2^57 * 2^63
  int128 den = num_experts;
  const int128 limit = static_cast<int128>(kMax) * den;  // num / den beyond it: C > 2^63
  // Scale by 10^p one factor at a time, stopping where the answer no longer depends on the rest.
  int p = cf.exponent;
  for (; p > 0 && num <= limit / 10; --p) num *= 10;
  for (; p < 0 && den < num; ++p) den *= 10;
  int64_t c = 0;
  if (p > 0) c = kMax;  // more slots than any expert can receive: keeps everything
  else if (num == 0) c = 0;
  else if (den >= num) c = 1;  // 0 < num / den <= 1, whatever factors of 10 den still lacks
  else c = static_cast<int64_t>(std::min<int128>((num + den - 1) / den, kMax));
  return std::max<int64_t>(c, min_capacity);
}

}  // namespace moe
