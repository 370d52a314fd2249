// Unit tests of the Hugging Face Mixtral mapping (tools/ckpt/hf_mixtral.h) and of moe-ckpt import's
// refusals: the rotary permutation against Hugging Face's rotate_half, each tensor's layout, the round
// trip, every setting export refuses, every config.json value and directory content import refuses.
// tests/hf_mixtral_reference.py checks the whole model against transformers itself.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/ops.h"
#include "core/parameter_names.h"
#include "launch/trainer/trainer.h"
#include "tests/test_util.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"
#include "tools/ckpt/hf_mixtral.h"
#include "tools/ckpt/safetensors.h"

namespace moe::ckpt {
namespace {

using namespace moe::test;  // NOLINT(google-build-using-namespace): the shared test helpers

namespace fs = std::filesystem;

// A small Mixtral-shaped run config: 2 layers, 4 query heads over 2 key/value heads, 4 experts of top 2.
TrainConfig small_config(bool tied = false) {
  TrainConfig cfg;
  cfg.model.vocab_size = 32;
  cfg.model.d_model = 16;
  cfg.model.n_layers = 2;
  cfg.model.n_heads = 4;
  cfg.model.n_kv_heads = 2;
  cfg.model.seq_len = 8;
  cfg.model.moe_every = 1;
  cfg.model.tie_embeddings = tied;
  cfg.model.rope_theta = 1e6f;
  cfg.moe.num_experts = 4;
  cfg.moe.top_k = 2;
  cfg.moe.expert_hidden = 6;
  return cfg;
}

// Every parameter of cfg's model with distinct random values, by name, whole (experts stacked).
std::map<std::string, Tensor> random_parameters(const TrainConfig& cfg) {
  TransformerLM model(transformer_config(cfg), 1);
  ParameterRegistry registry;
  model.register_parameters(registry);
  std::map<std::string, Tensor> out;
  for (const Parameter& p : registry.all()) out[p.name] = normal_tensor(p.value.shape(), 1.0f, 7, p.name);
  return out;
}

TEST(HfMixtral, OurRotaryOnPermutedFeaturesIsRotateHalf) {
  // Hugging Face's rotary (apply_rotary_pos_emb with rotate_half): y_i = x_i cos - x_{i+D/2} sin,
  // y_{i+D/2} = x_{i+D/2} cos + x_i sin, angle s * theta^(-2i/D), computed here in double.
  const int64_t S = 5, H = 2, Dh = 8, C = H * Dh;
  const float theta = 1e6f;
  const Tensor hf = normal_tensor({S, C}, 1.0f, 3, "x");
  Tensor hf_rotated = Tensor::empty({S, C});
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Dh / 2; ++i) {
        const double angle = static_cast<double>(s) * std::pow(static_cast<double>(theta), -2.0 * i / Dh);
        const double a = hf.f32()[s * C + h * Dh + i], b = hf.f32()[s * C + h * Dh + i + Dh / 2];
        hf_rotated.f32()[s * C + h * Dh + i] = static_cast<float>(a * std::cos(angle) - b * std::sin(angle));
        hf_rotated.f32()[s * C + h * Dh + i + Dh / 2] = static_cast<float>(b * std::cos(angle) + a * std::sin(angle));
      }
  // Our features are theirs permuted: ours[c] = theirs[hf_rotary_feature(c)] within each head.
  auto ours_of = [&](const Tensor& t) {
    Tensor o = Tensor::empty({S, C});
    for (int64_t s = 0; s < S; ++s)
      for (int64_t c = 0; c < C; ++c) o.f32()[s * C + c] = t.f32()[s * C + (c / Dh) * Dh + hf_rotary_feature(c % Dh, Dh)];
    return o;
  };
  Tensor y = Tensor::empty({S, C});
  rotary_forward(y, ours_of(hf), H, S, theta);
  const Tensor want = ours_of(hf_rotated);
  // Both take cos and sin of the same double angles rounded to float: a few float32 roundings apart.
  for (int64_t n = 0; n < S * C; ++n) EXPECT_NEAR(y.f32()[n], want.f32()[n], 1e-5f) << n;
}

TEST(HfMixtral, EachTensorIsLaidOutAsHuggingFaceReadsIt) {
  const TrainConfig cfg = small_config();
  const std::map<std::string, Tensor> ours = random_parameters(cfg);
  std::map<std::string, Tensor> theirs;
  for (NamedTensor& t : to_mixtral(cfg, [&](const std::string& n) { return ours.at(n); })) theirs[t.name] = t.data;
  const std::vector<MixtralTensorSpec> specs = mixtral_tensor_specs(cfg);
  ASSERT_EQ(theirs.size(), specs.size());
  for (const MixtralTensorSpec& s : specs) EXPECT_EQ(theirs.at(s.name).shape(), s.shape) << s.name;

  const int64_t d = 16, Dh = 4, H = 4, KV = 2, h = 6, E = 4, V = 32;
  auto at = [](const Tensor& t, int64_t i, int64_t j) { return t.f32()[i * t.dim(1) + j]; };
  const Tensor qkv = ours.at("layers.1.attn.w_qkv");  // (d, (H + 2 KV) Dh)
  ASSERT_EQ(qkv.shape(), (Shape{d, (H + 2 * KV) * Dh}));
  // Their q head 2 feature 1 is our feature 2 of q head 2 (the first of our pair 1).
  EXPECT_EQ(at(theirs.at("model.layers.1.self_attn.q_proj.weight"), 2 * Dh + 1, 5), at(qkv, 5, 2 * Dh + 2));
  // k head 1 feature Dh/2 (the second half's first) is our feature 1 of k head 1.
  EXPECT_EQ(at(theirs.at("model.layers.1.self_attn.k_proj.weight"), Dh + Dh / 2, 3), at(qkv, 3, H * Dh + Dh + 1));
  // v is not rotated: v head 1 feature 3 is our v column Dh + 3.
  EXPECT_EQ(at(theirs.at("model.layers.1.self_attn.v_proj.weight"), Dh + 3, 7), at(qkv, 7, (H + KV) * Dh + Dh + 3));
  EXPECT_EQ(at(theirs.at("model.layers.0.self_attn.o_proj.weight"), 3, 9), at(ours.at("layers.0.attn.w_out"), 9, 3));
  EXPECT_EQ(at(theirs.at("model.layers.0.block_sparse_moe.gate.weight"), 2, 5), at(ours.at("layers.0.moe.w_gate"), 5, 2));
  const Tensor w_in = ours.at("layers.0.moe.w_in");    // (E, d, 2h): [gate | up]
  const Tensor w_out = ours.at("layers.0.moe.w_out");  // (E, h, d)
  ASSERT_EQ(w_in.shape(), (Shape{E, d, 2 * h}));
  const std::string e3 = "model.layers.0.block_sparse_moe.experts.3.";
  EXPECT_EQ(at(theirs.at(e3 + "w1.weight"), 4, 7), w_in.f32()[(3 * d + 7) * 2 * h + 4]);      // gate
  EXPECT_EQ(at(theirs.at(e3 + "w3.weight"), 4, 7), w_in.f32()[(3 * d + 7) * 2 * h + h + 4]);  // up
  EXPECT_EQ(at(theirs.at(e3 + "w2.weight"), 7, 4), w_out.f32()[(3 * h + 4) * d + 7]);
  EXPECT_EQ(at(theirs.at("lm_head.weight"), V - 1, 2), at(ours.at("head"), 2, V - 1));
  EXPECT_EQ(at(theirs.at("model.embed_tokens.weight"), 4, 2), at(ours.at("embedding"), 4, 2));
  EXPECT_EQ(theirs.at("model.norm.weight").f32()[5], ours.at("final_norm.g").f32()[5]);
  EXPECT_EQ(theirs.at("model.layers.1.post_attention_layernorm.weight").f32()[5], ours.at("layers.1.norm2.g").f32()[5]);
}

TEST(HfMixtral, ImportOfTheExportIsTheIdentity) {
  for (bool tied : {false, true}) {
    const TrainConfig cfg = small_config(tied);
    const std::map<std::string, Tensor> ours = random_parameters(cfg);
    std::map<std::string, Tensor> theirs;
    for (NamedTensor& t : to_mixtral(cfg, [&](const std::string& n) { return ours.at(n); })) theirs[t.name] = t.data;
    EXPECT_EQ(theirs.count("lm_head.weight"), tied ? 0u : 1u);
    size_t parameters = 0;
    for (const NamedTensor& t : from_mixtral(cfg, [&](const std::string& n) { return theirs.at(n); })) {
      if (!is_parameter(t.name)) {
        EXPECT_EQ(max_abs(t.data), 0.0) << t.name;  // selection_bias
        continue;
      }
      ++parameters;
      EXPECT_EQ(t.expert, ours.at(t.name).shape().size() == 3) << t.name;
      EXPECT_EQ(floats_of(t.data), floats_of(ours.at(t.name))) << t.name;
    }
    EXPECT_EQ(parameters, ours.size());
  }
}

TEST(HfMixtral, ExportRefusesWhatMixtralCannotExpress) {
  const std::vector<std::pair<std::function<void(TrainConfig&)>, std::string>> cases = {
      {[](TrainConfig& c) { c.model.norm = NormKind::LayerNorm; }, "model.norm = layernorm: Mixtral needs rmsnorm"},
      {[](TrainConfig& c) { c.model.positions = PositionKind::Learned; },
       "model.positions = learned: Mixtral needs rotary"},
      {[](TrainConfig& c) { c.model.moe_every = 2; }, "model.moe_every = 2: Mixtral needs 1"},
      {[](TrainConfig& c) { c.moe.shared_experts = 1; }, "moe.shared_experts = 1: Mixtral needs 0"},
      {[](TrainConfig& c) { c.moe.activation = Activation::GELU; }, "moe.activation = gelu: Mixtral needs swiglu"},
      {[](TrainConfig& c) { c.moe.activation = Activation::ReLU; }, "moe.activation = relu: Mixtral needs swiglu"},
      {[](TrainConfig& c) { c.moe.routing = Routing::ExpertChoice; },
       "moe.routing = expert_choice: Mixtral needs token_choice"},
      {[](TrainConfig& c) { c.moe.routing = Routing::Hash; }, "moe.routing = hash: Mixtral needs token_choice"},
      {[](TrainConfig& c) { c.moe.routing = Routing::Table; }, "moe.routing = table: Mixtral needs token_choice"},
      {[](TrainConfig& c) { c.moe.score_function = ScoreFunction::Sigmoid; },
       "moe.score_function = sigmoid: Mixtral needs softmax"},
      {[](TrainConfig& c) { c.moe.renormalize = false; }, "moe.renormalize = false: Mixtral needs true"},
      {[](TrainConfig& c) { c.moe.routed_scaling_factor = 2.5f; }, "moe.routed_scaling_factor = 2.5: Mixtral needs 1"},
      {[](TrainConfig& c) { c.moe.routing_groups = 2; }, "moe.routing_groups = 2: Mixtral needs 0"},
      {[](TrainConfig& c) { c.moe.routing_groups = MoEConfig::kRoutingGroupsPerRank; },
       "moe.routing_groups = ep: Mixtral needs 0"},
      {[](TrainConfig& c) { c.moe.balancing = Balancing::AuxFree; }, "moe.balancing = aux_free: Mixtral needs aux_loss"},
  };
  require_mixtral_expressible(small_config());  // the defaults of a Mixtral-shaped config pass
  for (const auto& [change, message] : cases) {
    TrainConfig cfg = small_config();
    change(cfg);
    EXPECT_CONTAINS(error_message([&] { require_mixtral_expressible(cfg); }), message);
  }
}

// A valid config.json of small_config's model.
std::string small_config_json() { return mixtral_config_json(small_config(), {1, 2}); }

// small_config_json with one key set to `value` (JSON text), or removed when value is empty.
std::string config_json_with(const std::string& key, const std::string& value) {
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(small_config_json());
  if (value.empty()) j.erase(key);
  else j[key] = nlohmann::ordered_json::parse(value);
  return j.dump(2);
}

TEST(HfMixtral, ConfigJsonReadsBackAsTheModel) {
  const TrainConfig cfg = train_config_from_mixtral(small_config_json(), "config.json");
  const TrainConfig want = small_config();
  EXPECT_EQ(cfg.model.vocab_size, want.model.vocab_size);
  EXPECT_EQ(cfg.model.d_model, want.model.d_model);
  EXPECT_EQ(cfg.model.n_layers, want.model.n_layers);
  EXPECT_EQ(cfg.model.n_heads, want.model.n_heads);
  EXPECT_EQ(cfg.model.kv_heads(), 2);
  EXPECT_EQ(cfg.model.seq_len, want.model.seq_len);
  EXPECT_EQ(cfg.model.rope_theta, 1e6f);
  EXPECT_EQ(cfg.model.norm_eps, want.model.norm_eps);
  EXPECT_EQ(cfg.model.tie_embeddings, false);
  EXPECT_EQ(cfg.moe.num_experts, 4);
  EXPECT_EQ(cfg.moe.top_k, 2);
  EXPECT_EQ(cfg.moe.expert_hidden, 6);
  EXPECT_LE(cfg.moe.capacity_factor, 0);  // dropless
  EXPECT_LE(cfg.moe.eval_capacity_factor, 0);
  EXPECT_EQ(cfg.moe.aux_loss_weight(), want.moe.aux_loss_weight());
  EXPECT_EQ(cfg.moe.z_loss_weight(), 0.0f);
  EXPECT_CONTAINS(small_config_json(), "\"rms_norm_eps\": 1e-05", "\"rope_theta\": 1000000.0",
                  "\"sliding_window\": null", "\"architectures\": [\n    \"MixtralForCausalLM\"", "\"eos_token_id\": 2");
  // Keys left out take MixtralConfig's defaults, as transformers reads them.
  EXPECT_EQ(train_config_from_mixtral(config_json_with("rope_theta", ""), "c").model.rope_theta, 1e6f);
  EXPECT_EQ(train_config_from_mixtral(config_json_with("tie_word_embeddings", ""), "c").model.tie_embeddings, false);
}

TEST(HfMixtral, ImportRefusesConfigValuesItCannotExpress) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "'cfg/config.json' is not JSON"},
      {"[1]", "is not a JSON object"},
      {config_json_with("model_type", "\"llama\""), "model_type = llama is not supported; moe-ckpt import reads "
                                                    "model_type mixtral"},
      {config_json_with("architectures", "[\"MistralForCausalLM\"]"), "architectures = [\"MistralForCausalLM\"]"},
      {config_json_with("hidden_act", "\"gelu\""), "hidden_act = gelu is not supported; accepted: silu"},
      {config_json_with("rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}"),
       "rope_scaling = {\"type\":\"linear\",\"factor\":2.0} is not supported; accepted: null"},
      {config_json_with("sliding_window", "4"), "sliding_window = 4 is not supported; accepted: null or at least "
                                                "max_position_embeddings (8)"},
      {config_json_with("head_dim", "8"), "head_dim = 8 is not supported; accepted: hidden_size / "
                                          "num_attention_heads = 4"},
      {config_json_with("hidden_size", ""), "hidden_size is missing"},
      {config_json_with("hidden_size", "16.5"), "hidden_size = 16.5 is not an integer"},
      {config_json_with("num_key_value_heads", "3"), "describes a model moe-train cannot build: n_kv_heads = 3 does not divide n_heads = 4"},
      {config_json_with("num_experts_per_tok", "5"), "cannot build: top_k = 5 must be <= num_experts = 4"},
      {config_json_with("tie_word_embeddings", "1"), "tie_word_embeddings = 1 is not true or false"},
  };
  for (const auto& [text, message] : cases)
    EXPECT_CONTAINS(error_message<CheckpointError>([&] { train_config_from_mixtral(text, "cfg/config.json"); }),
                    "'cfg/config.json'", message);
}

// A scratch directory removed at the end of the test.
class ImportDirectory : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("test_hf_mixtral_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A Mixtral directory of small_config's model, its tensors changed by `edit` first, with config.json text `config`.
  std::string make_hf_dir(const std::string& name, const std::function<void(std::vector<TensorInfo>&)>& edit = {},
                          const std::string& config = small_config_json(), uint64_t max_shard = 1 << 30) {
    const TrainConfig cfg = small_config();
    const std::map<std::string, Tensor> ours = random_parameters(cfg);
    std::map<std::string, Tensor> theirs;
    std::vector<TensorInfo> infos;
    for (NamedTensor& t : to_mixtral(cfg, [&](const std::string& n) { return ours.at(n); })) {
      infos.push_back({t.name, false, t.data.shape(), DType::F32, {}});
      theirs[t.name] = t.data;
    }
    if (edit) edit(infos);
    const std::string dir = (root_ / name).string();
    fs::create_directories(dir);
    write_safetensors(
        [&](const TensorInfo& info) {
          return info.dtype == DType::I32 ? Tensor::zeros(info.shape, DType::I32)
                 : theirs.count(info.name) && theirs.at(info.name).shape() == info.shape ? theirs.at(info.name)
                                                                                          : Tensor::zeros(info.shape);
        },
        infos, {{"format", "pt"}}, max_shard, dir);
    std::ofstream(dir + "/config.json") << config;
    return dir;
  }
  int import(const std::string& dir, const std::string& out, const std::string& ep = "1") {
    Args args;
    args.positional = {dir, (root_ / out).string()};
    args.options["--ep"] = ep;
    return cmd_import(args);
  }

  fs::path root_;
};

TEST_F(ImportDirectory, ImportsAShardedDirectoryAtAnyEp) {
  const std::string dir = make_hf_dir("hf", {}, small_config_json(), 4096);
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  ASSERT_EQ(import(dir, "ep2", "2"), 0);
  const CheckpointData data = load_checkpoint_data((root_ / "ep2").string());
  EXPECT_EQ(data.header.layout().ep(), 2);
  EXPECT_EQ(data.header.step(), 0);
  EXPECT_EQ(data.config.model.kv_heads(), 2);
  EXPECT_EQ(data.config.model.rope_theta, 1e6f);
  // Every parameter, its optimizer state (zeros) and the selection biases: what moe-train loads.
  for (const auto& [name, t] : random_parameters(small_config())) {
    const NamedTensor* p = const_cast<CheckpointData&>(data).find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->data.shape(), t.shape()) << name;
    for (const std::string& s : optimizer_state_names(data.config.optim.name, name))
      EXPECT_NE(const_cast<CheckpointData&>(data).find(s), nullptr) << s;
  }
}

TEST_F(ImportDirectory, RefusesMissingExtraMisshapenAndNonFloatTensors) {
  const std::string q = "model.layers.1.self_attn.q_proj.weight";
  auto message = [&](const std::string& name, const std::function<void(std::vector<TensorInfo>&)>& edit) {
    const std::string dir = make_hf_dir(name, edit);
    return error_message<CheckpointError>([&] { import(dir, name + ".out"); });
  };
  EXPECT_CONTAINS(message("missing", [&](std::vector<TensorInfo>& t) { std::erase_if(t, [&](auto& i) { return i.name == q; }); }),
                  "has no tensor '" + q + "', which the Mixtral that '", "config.json' describes needs");
  EXPECT_CONTAINS(message("missing_head",
                          [&](std::vector<TensorInfo>& t) { std::erase_if(t, [](auto& i) { return i.name == "lm_head.weight"; }); }),
                  "has no tensor 'lm_head.weight'", "(tie_word_embeddings is false)");
  EXPECT_CONTAINS(message("extra", [](std::vector<TensorInfo>& t) { t.push_back({"model.layers.0.mlp.bias", false, {16}, DType::F32, {}}); }),
                  "model.safetensors': tensor 'model.layers.0.mlp.bias' is not part of the Mixtral");
  EXPECT_CONTAINS(message("shape", [&](std::vector<TensorInfo>& t) {
                    for (TensorInfo& i : t) if (i.name == q) i.shape = {16, 8};
                  }),
                  "tensor '" + q + "' has shape (16, 8);", "needs (16, 16)");
  EXPECT_CONTAINS(message("dtype", [&](std::vector<TensorInfo>& t) {
                    for (TensorInfo& i : t) if (i.name == q) i.dtype = DType::I32;
                  }),
                  "tensor '" + q + "' has dtype I32; accepted: F32, BF16, F16");
  // Tied embeddings: transformers saves no lm_head, and one present is refused rather than ignored.
  const std::string tied = make_hf_dir("tied", {}, config_json_with("tie_word_embeddings", "true"));
  EXPECT_CONTAINS(error_message<CheckpointError>([&] { import(tied, "tied.out"); }),
                  "tensor 'lm_head.weight' is not part of", "(tie_word_embeddings is true: the head is the embedding)");
  // A bad config.json is refused before any tensor is read; nothing is written.
  const std::string llama = make_hf_dir("llama", {}, config_json_with("model_type", "\"llama\""));
  EXPECT_CONTAINS(error_message<CheckpointError>([&] { import(llama, "llama.out"); }), "config.json': model_type = llama");
  EXPECT_FALSE(fs::exists(root_ / "llama.out"));
  const std::string empty = (root_ / "empty").string();
  fs::create_directories(empty);
  EXPECT_CONTAINS(error_message<CheckpointError>([&] { import(empty, "empty.out"); }), "has no config.json");
  std::ofstream(empty + "/config.json") << small_config_json();
  EXPECT_CONTAINS(error_message<CheckpointError>([&] { import(empty, "empty.out"); }),
                  "holds neither model.safetensors nor model.safetensors.index.json");
  // ep must divide the experts (4).
  EXPECT_CONTAINS(error_message([&] { import(make_hf_dir("ep3"), "ep3.out", "3"); }), "not divisible by ep = 3");
}

TEST(HfMixtral, ReadsBf16AndF16Exactly) {
  const fs::path dir = fs::temp_directory_path() / ("test_hf_mixtral_dtypes_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  // bf16 1.5 = 0x3fc0, -2^-20 = 0xb580; f16 1.5 = 0x3e00, -65504 = 0xfbff, 2^-24 (subnormal) = 0x0001.
  const std::string header = "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                             "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[4,10]}}";
  const std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(padded.size() >> (8 * i));
  bytes += padded;
  for (int v : {0xc0, 0x3f, 0x80, 0xb5, 0x00, 0x3e, 0xff, 0xfb, 0x01, 0x00}) bytes += static_cast<char>(v);
  std::ofstream(dir / "model.safetensors", std::ios::binary) << bytes;
  const std::map<std::string, SafetensorsEntry> e = read_safetensors_directory(dir.string());
  EXPECT_EQ(floats_of(read_safetensors_f32(e.at("a"), "a")), (std::vector<float>{1.5f, -std::ldexp(1.0f, -20)}));
  EXPECT_EQ(floats_of(read_safetensors_f32(e.at("b"), "b")), (std::vector<float>{1.5f, -65504.f, std::ldexp(1.0f, -24)}));
  // A header whose offsets leave the file is refused, naming the file and tensor.
  std::string cut = bytes.substr(0, bytes.size() - 2);
  std::ofstream(dir / "model.safetensors", std::ios::binary | std::ios::trunc) << cut;
  EXPECT_CONTAINS(error_message<CheckpointError>([&] { read_safetensors_directory(dir.string()); }),
                  "model.safetensors': tensor 'b' (F16, shape [3]) has data_offsets [4,10]");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moe::ckpt
