// The Hugging Face Mixtral format and its mapping to our model (tools/ckpt/hf_mixtral.h).
#include "tools/ckpt/hf_mixtral.h"

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"
#include "core/parameter_names.h"
#include "launch/trainer/trainer.h"

namespace moe::ckpt {

using Json = nlohmann::ordered_json;

namespace {

// The sizes the mapping needs.
struct Sizes {
  int64_t V, d, L, H, KV, Dh, E, h;
  bool tied;
  explicit Sizes(const TrainConfig& cfg)
      : V(cfg.model.vocab_size),
        d(cfg.model.d_model),
        L(cfg.model.n_layers),
        H(cfg.model.n_heads),
        KV(cfg.model.kv_heads()),
        Dh(cfg.model.head_dim()),
        E(cfg.moe.num_experts),
        h(cfg.moe.expert_hidden),
        tied(cfg.model.tie_embeddings) {}
  };

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }
std::string expert_prefix(int64_t i, int64_t j) {
  return layer_prefix(i) + "block_sparse_moe.experts." + std::to_string(j) + ".";
}

// The float as the shortest decimal that reads back as the same float: 1e-05, not 9.99999974737875e-06.
double decimal_of(float f) {
  char buf[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(f));
    if (std::strtof(buf, nullptr) == f) break;
  }
  return std::strtod(buf, nullptr);
}

// (r, c) -> (c, r)
Tensor transposed(const Tensor& t) {
  MOE_ASSERT(t.rank() == 2, "the mapping transposes matrices only");
  const int64_t r = t.dim(0), c = t.dim(1);
  Tensor out = Tensor::empty({c, r});
  const float* in = t.f32();
  float* o = out.f32();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) o[j * r + i] = in[i * c + j];
  return out;
}

// Columns [begin, begin + n) of the matrix m (rows, cols) as a (n, rows) matrix: Hugging Face's (out, in)
// weight of those output features. rotary_heads > 0: the columns are that many heads of Dh features,
// each head's features reordered as Hugging Face's rotary pairs them.
Tensor hf_rows_of_columns(const Tensor& m, int64_t begin, int64_t n, int64_t rotary_heads, int64_t Dh) {
  const int64_t rows = m.dim(0), cols = m.dim(1);
  Tensor out = Tensor::empty({n, rows});
  const float* in = m.f32();
  float* o = out.f32();
  for (int64_t c = 0; c < n; ++c) {
    const int64_t hf = rotary_heads > 0 ? (c / Dh) * Dh + hf_rotary_feature(c % Dh, Dh) : c;
    for (int64_t r = 0; r < rows; ++r) o[hf * rows + r] = in[r * cols + begin + c];
  }
  return out;
}

// The inverse: writes Hugging Face's (n, rows) weight `w` into columns [begin, begin + n) of m (rows, cols).
void set_columns_from_hf_rows(Tensor& m, int64_t begin, const Tensor& w, int64_t rotary_heads, int64_t Dh) {
  const int64_t rows = m.dim(0), cols = m.dim(1), n = w.dim(0);
  const float* in = w.f32();
  float* o = m.f32();
  for (int64_t c = 0; c < n; ++c) {
    const int64_t hf = rotary_heads > 0 ? (c / Dh) * Dh + hf_rotary_feature(c % Dh, Dh) : c;
    for (int64_t r = 0; r < rows; ++r) o[r * cols + begin + c] = in[hf * rows + r];
  }
}

// Expert e's (d, 2h) slice of w_in (E, d, 2h) split into w1 (gate) and w3 (up), each (h, d).
Tensor expert_half(const Tensor& w_in, int64_t e, int64_t half, int64_t h) {
  const int64_t d = w_in.dim(1);
  const Tensor slice = w_in.rows(e, e + 1).reshape({d, 2 * h});
  return hf_rows_of_columns(slice, half * h, h, 0, 0);
}

std::string json_text(const Json& j) { return j.is_string() ? j.get<std::string>() : j.dump(); }

// Reads config.json's values with messages naming the file and key.
class ConfigReader {
 public:
  ConfigReader(const Json& root, const std::string& path) : root_(root), path_(path) {}

  [[noreturn]] void refuse(const std::string& key, const std::string& why) const {
    throw CheckpointError("'" + path_ + "': " + key + " " + why);
  }
  bool has(const char* key) const { return root_.contains(key) && !root_[key].is_null(); }
  // The value as text (a string without its quotes), or fallback when absent.
  std::string text(const char* key, const std::string& fallback) const {
    return has(key) ? json_text(root_[key]) : fallback;
  }
  int64_t integer(const char* key, int64_t fallback, bool required = false) const {
    if (!has(key)) {
      if (required) refuse(key, "is missing; a Mixtral config.json has it (an integer)");
      return fallback;
    }
    const Json& v = root_[key];
    if (!v.is_number_integer()) refuse(key, "= " + json_text(v) + " is not an integer");
    return v.get<int64_t>();
  }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const Json& v = root_[key];
    if (!v.is_number()) refuse(key, "= " + json_text(v) + " is not a number");
    return v.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const Json& v = root_[key];
    if (!v.is_boolean()) refuse(key, "= " + json_text(v) + " is not true or false");
    return v.get<bool>();
  }

 private:
  const Json& root_;
  std::string path_;
};

}  // namespace

int64_t hf_rotary_feature(int64_t c, int64_t head_dim) { return c % 2 == 0 ? c / 2 : head_dim / 2 + c / 2; }

void require_mixtral_expressible(const TrainConfig& cfg) {
  const ModelConfig& m = cfg.model;
  const MoEConfig& e = cfg.moe;
  auto need = [](bool ok, const std::string& setting, const std::string& value, const std::string& needed) {
    MOE_REQUIRE(ok, setting, " = ", value, ": Mixtral needs ", needed);
  };
  need(m.norm == NormKind::RMSNorm, "model.norm", "layernorm", "rmsnorm (RMSNorm, without biases)");
  need(m.positions == PositionKind::Rotary, "model.positions", "learned", "rotary");
  need(m.moe_every == 1, "model.moe_every", std::to_string(m.moe_every), "1 (every layer an MoE layer, no dense layers)");
  need(e.shared_experts == 0, "moe.shared_experts", std::to_string(e.shared_experts), "0 (no shared experts)");
  need(e.activation == Activation::SwiGLU, "moe.activation", to_string(e.activation), "swiglu");
  need(e.routing == Routing::TokenChoice, "moe.routing", to_string(e.routing), "token_choice");
  need(e.score_function == ScoreFunction::Softmax, "moe.score_function", to_string(e.score_function), "softmax");
  need(e.renormalize, "moe.renormalize", "false", "true (the top_k weights renormalised to sum to 1)");
  std::ostringstream scaling;
  scaling << e.routed_scaling_factor;
  need(e.routed_scaling_factor == 1.0f, "moe.routed_scaling_factor", scaling.str(), "1");
  need(e.routing_groups == 0, "moe.routing_groups",
       e.routing_groups == MoEConfig::kRoutingGroupsPerRank ? "ep" : std::to_string(e.routing_groups),
       "0 (no group-limited routing)");
  need(e.balancing == Balancing::AuxLoss, "moe.balancing", "aux_free",
       "aux_loss (its router has no selection biases to add to the scores)");
}

std::string mixtral_config_json(const TrainConfig& cfg, const SpecialTokens& tokens) {
  const Sizes s(cfg);
  auto token = [](int64_t id) { return id >= 0 ? Json(id) : Json(nullptr); };
  Json j;
  j["architectures"] = Json::array({kMixtralArchitecture});
  j["model_type"] = kMixtralModelType;
  j["vocab_size"] = s.V;
  j["hidden_size"] = s.d;
  j["intermediate_size"] = s.h;
  j["num_hidden_layers"] = s.L;
  j["num_attention_heads"] = s.H;
  j["num_key_value_heads"] = s.KV;
  j["max_position_embeddings"] = cfg.model.seq_len;
  j["rms_norm_eps"] = decimal_of(cfg.model.norm_eps);
  j["rope_theta"] = decimal_of(cfg.model.rope_theta);
  j["num_local_experts"] = s.E;
  j["num_experts_per_tok"] = cfg.moe.top_k;
  j["tie_word_embeddings"] = s.tied;
  j["hidden_act"] = "silu";
  j["sliding_window"] = nullptr;
  j["attention_dropout"] = 0.0;
  j["router_aux_loss_coef"] = decimal_of(cfg.moe.aux_loss_weight());
  j["router_jitter_noise"] = decimal_of(cfg.moe.jitter_eps);
  j["output_router_logits"] = false;
  j["initializer_range"] = decimal_of(cfg.model.init_std);
  j["bos_token_id"] = token(tokens.bos);
  j["eos_token_id"] = token(tokens.eos);
  j["torch_dtype"] = "float32";
  j["use_cache"] = true;
  return j.dump(2) + "\n";
}

TrainConfig train_config_from_mixtral(const std::string& json_text_in, const std::string& path) {
  Json root;
  try {
    root = Json::parse(json_text_in);
  } catch (const Json::parse_error& e) {
    throw CheckpointError("'" + path + "' is not JSON: " + e.what());
  }
  if (!root.is_object()) throw CheckpointError("'" + path + "' is not a JSON object; a config.json is one");
  const ConfigReader r(root, path);
  const std::string model_type = r.text("model_type", "(missing)");
  if (model_type != kMixtralModelType)
    r.refuse("model_type", "= " + model_type + " is not supported; moe-ckpt import reads model_type mixtral (" +
                               kMixtralArchitecture + ")");
  if (r.has("architectures")) {
    const Json& a = root["architectures"];
    if (!a.is_array() || a.size() != 1 || a[0] != kMixtralArchitecture)
      r.refuse("architectures", "= " + a.dump() + " is not supported; accepted: [\"" + kMixtralArchitecture + "\"]");
  }
  const std::string act = r.text("hidden_act", "silu");
  if (act != "silu") r.refuse("hidden_act", "= " + act + " is not supported; accepted: silu (SwiGLU experts)");
  if (r.has("rope_scaling"))
    r.refuse("rope_scaling", "= " + root["rope_scaling"].dump() + " is not supported; accepted: null (plain rotary)");

  TrainConfig cfg;
  ModelConfig& m = cfg.model;
  m.vocab_size = r.integer("vocab_size", 0, true);
  m.d_model = r.integer("hidden_size", 0, true);
  m.n_layers = r.integer("num_hidden_layers", 0, true);
  m.n_heads = r.integer("num_attention_heads", 0, true);
  // MixtralConfig's defaults for what the file leaves out.
  m.n_kv_heads = r.integer("num_key_value_heads", 8);
  m.seq_len = r.integer("max_position_embeddings", 4096 * 32);
  m.norm_eps = static_cast<float>(r.number("rms_norm_eps", 1e-5));
  m.rope_theta = static_cast<float>(r.number("rope_theta", 1e6));
  m.tie_embeddings = r.boolean("tie_word_embeddings", false);
  m.init_std = static_cast<float>(r.number("initializer_range", 0.02));
  m.norm = NormKind::RMSNorm;
  m.positions = PositionKind::Rotary;
  m.moe_every = 1;
  if (r.has("head_dim") && m.n_heads > 0 && r.integer("head_dim", 0) * m.n_heads != m.d_model)
    r.refuse("head_dim", "= " + json_text(root["head_dim"]) + " is not supported; accepted: hidden_size / "
                         "num_attention_heads = " + std::to_string(m.d_model / m.n_heads));
  if (r.has("sliding_window") && r.integer("sliding_window", 0) < m.seq_len)
    r.refuse("sliding_window", "= " + json_text(root["sliding_window"]) +
                                   " is not supported; accepted: null or at least max_position_embeddings (" +
                                   std::to_string(m.seq_len) + ")");

  MoEConfig& e = cfg.moe;
  e.num_experts = r.integer("num_local_experts", 8);
  e.top_k = r.integer("num_experts_per_tok", 2);
  e.expert_hidden = r.integer("intermediate_size", 0, true);
  e.activation = Activation::SwiGLU;
  e.routing = Routing::TokenChoice;
  e.score_function = ScoreFunction::Softmax;
  e.renormalize = true;
  e.capacity_factor = 0;  // dropless, as Mixtral
  e.eval_capacity_factor = 0;
  e.aux_loss_coeff = static_cast<float>(r.number("router_aux_loss_coef", 0.001));
  e.z_loss_coeff = 0;
  e.jitter_eps = static_cast<float>(r.number("router_jitter_noise", 0));
  try {
    transformer_config(cfg).validate();
  } catch (const InvalidArgument& ex) {
    throw CheckpointError("'" + path + "' describes a model moe-train cannot build: " + ex.what() +
                          " (named as moe-train names config.json's keys: hidden_size d_model, num_attention_heads "
                          "n_heads, num_key_value_heads n_kv_heads, num_local_experts num_experts, "
                          "num_experts_per_tok top_k, intermediate_size expert_hidden)");
  }
  return cfg;
}

std::vector<MixtralTensorSpec> mixtral_tensor_specs(const TrainConfig& cfg) {
  const Sizes s(cfg);
  std::vector<MixtralTensorSpec> out = {{"model.embed_tokens.weight", {s.V, s.d}}};
  for (int64_t i = 0; i < s.L; ++i) {
    const std::string p = layer_prefix(i);
    out.push_back({p + "input_layernorm.weight", {s.d}});
    out.push_back({p + "self_attn.q_proj.weight", {s.H * s.Dh, s.d}});
    out.push_back({p + "self_attn.k_proj.weight", {s.KV * s.Dh, s.d}});
    out.push_back({p + "self_attn.v_proj.weight", {s.KV * s.Dh, s.d}});
    out.push_back({p + "self_attn.o_proj.weight", {s.d, s.H * s.Dh}});
    out.push_back({p + "post_attention_layernorm.weight", {s.d}});
    out.push_back({p + "block_sparse_moe.gate.weight", {s.E, s.d}});
    for (int64_t j = 0; j < s.E; ++j) {
      out.push_back({expert_prefix(i, j) + "w1.weight", {s.h, s.d}});
      out.push_back({expert_prefix(i, j) + "w2.weight", {s.d, s.h}});
      out.push_back({expert_prefix(i, j) + "w3.weight", {s.h, s.d}});
    }
  }
  out.push_back({"model.norm.weight", {s.d}});
  if (!s.tied) out.push_back({"lm_head.weight", {s.V, s.d}});
  return out;
}

std::vector<NamedTensor> to_mixtral(const TrainConfig& cfg, const std::function<Tensor(const std::string&)>& ours) {
  const Sizes s(cfg);
  std::vector<NamedTensor> out;
  auto add = [&](const std::string& name, Tensor t) { out.push_back({name, std::move(t), false}); };
  add("model.embed_tokens.weight", ours(names::kEmbedding));
  for (int64_t i = 0; i < s.L; ++i) {
    const std::string p = layer_prefix(i);
    add(p + "input_layernorm.weight", ours(names::layer_tensor(i, names::kNorm1, names::kGain)));
    const Tensor qkv = ours(names::layer_tensor(i, names::kAttn, names::kWQkv));
    add(p + "self_attn.q_proj.weight", hf_rows_of_columns(qkv, 0, s.H * s.Dh, s.H, s.Dh));
    add(p + "self_attn.k_proj.weight", hf_rows_of_columns(qkv, s.H * s.Dh, s.KV * s.Dh, s.KV, s.Dh));
    add(p + "self_attn.v_proj.weight", hf_rows_of_columns(qkv, (s.H + s.KV) * s.Dh, s.KV * s.Dh, 0, s.Dh));
    add(p + "self_attn.o_proj.weight", transposed(ours(names::layer_tensor(i, names::kAttn, names::kWOut))));
    add(p + "post_attention_layernorm.weight", ours(names::layer_tensor(i, names::kNorm2, names::kGain)));
    add(p + "block_sparse_moe.gate.weight", transposed(ours(names::layer_tensor(i, names::kMoE, names::kWGate))));
    const Tensor w_in = ours(names::layer_tensor(i, names::kMoE, names::kWIn));
    const Tensor w_out = ours(names::layer_tensor(i, names::kMoE, names::kWOut));
    for (int64_t j = 0; j < s.E; ++j) {
      add(expert_prefix(i, j) + "w1.weight", expert_half(w_in, j, 0, s.h));
      add(expert_prefix(i, j) + "w2.weight", transposed(w_out.rows(j, j + 1).reshape({s.h, s.d})));
      add(expert_prefix(i, j) + "w3.weight", expert_half(w_in, j, 1, s.h));
    }
  }
  add("model.norm.weight", ours(names::tensor_name(names::kFinalNorm, names::kGain)));
  if (!s.tied) add("lm_head.weight", transposed(ours(names::kHead)));
  return out;
}

std::vector<NamedTensor> from_mixtral(const TrainConfig& cfg,
                                      const std::function<Tensor(const std::string&)>& theirs) {
  const Sizes s(cfg);
  std::vector<NamedTensor> out;
  auto add = [&](const std::string& name, Tensor t, bool expert = false) {
    out.push_back({name, std::move(t), expert});
  };
  add(names::kEmbedding, theirs("model.embed_tokens.weight"));
  for (int64_t i = 0; i < s.L; ++i) {
    const std::string p = layer_prefix(i);
    add(names::layer_tensor(i, names::kNorm1, names::kGain), theirs(p + "input_layernorm.weight"));
    Tensor qkv = Tensor::empty({s.d, cfg.model.qkv_width()});
    set_columns_from_hf_rows(qkv, 0, theirs(p + "self_attn.q_proj.weight"), s.H, s.Dh);
    set_columns_from_hf_rows(qkv, s.H * s.Dh, theirs(p + "self_attn.k_proj.weight"), s.KV, s.Dh);
    set_columns_from_hf_rows(qkv, (s.H + s.KV) * s.Dh, theirs(p + "self_attn.v_proj.weight"), 0, s.Dh);
    add(names::layer_tensor(i, names::kAttn, names::kWQkv), qkv);
    add(names::layer_tensor(i, names::kAttn, names::kWOut), transposed(theirs(p + "self_attn.o_proj.weight")));
    add(names::layer_tensor(i, names::kNorm2, names::kGain), theirs(p + "post_attention_layernorm.weight"));
    add(names::layer_tensor(i, names::kMoE, names::kWGate), transposed(theirs(p + "block_sparse_moe.gate.weight")));
    Tensor w_in = Tensor::empty({s.E, s.d, 2 * s.h});
    Tensor w_out = Tensor::empty({s.E, s.h, s.d});
    for (int64_t j = 0; j < s.E; ++j) {
      Tensor in_slice = w_in.rows(j, j + 1).reshape({s.d, 2 * s.h});  // a view: writes land in w_in
      set_columns_from_hf_rows(in_slice, 0, theirs(expert_prefix(i, j) + "w1.weight"), 0, 0);
      set_columns_from_hf_rows(in_slice, s.h, theirs(expert_prefix(i, j) + "w3.weight"), 0, 0);
      const Tensor w2 = transposed(theirs(expert_prefix(i, j) + "w2.weight"));
      std::copy(w2.f32(), w2.f32() + w2.numel(), w_out.f32() + j * s.h * s.d);
    }
    add(names::layer_tensor(i, names::kMoE, names::kWIn), w_in, true);
    add(names::layer_tensor(i, names::kMoE, names::kWOut), w_out, true);
    add(names::layer_tensor(i, names::kMoE, names::kSelectionBias), Tensor::zeros({s.E}));
  }
  add(names::tensor_name(names::kFinalNorm, names::kGain), theirs("model.norm.weight"));
  if (!s.tied) add(names::kHead, transposed(theirs("lm_head.weight")));
  return out;
}

}  // namespace moe::ckpt
