// The moe-train configuration: the schema (every key declared once) and the loops over it that load
// YAML, apply overrides, validate, print the resolved config and list the keys.
#include "launch/config/train_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <set>
#include <sstream>
#include <system_error>
#include <utility>

#include "core/check.h"
#include "core/model/transformer.h"
#include "core/ops.h"
#include "launch/config/expert_schedule.h"
#include "launch/config/launch_values.h"

namespace moe {
namespace {

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw InvalidArgument(detail::concat("config: ", args...));
}

// ---- Bounds on what a config may hold and what a message quotes ------------------------------------

// The most bytes a config file may have: real ones are a few KiB; this keeps a wrong path (a log, a
// data file) from being read into memory on every rank.
constexpr uintmax_t kMaxConfigBytes = uintmax_t{16} << 20;
constexpr const char* kMaxConfigBytesText = "16 MiB";

// The most characters of user input a message quotes.
constexpr size_t kMaxQuoted = 80;

// User input (a key, a value, an argument, a path) as every message quotes it: whole when short,
// else its first kMaxQuoted characters and its size, so a message stays short whatever the input.
std::string clipped(const std::string& text) {
  if (text.size() <= kMaxQuoted) return text;
  return text.substr(0, kMaxQuoted) + "... (" + std::to_string(text.size()) + " bytes)";
}

// ---- Values as text --------------------------------------------------------------------------------

// A YAML double-quoted scalar: safe for any text (empty, "true", "1e3", quotes, backslashes).
std::string quoted(const std::string& s) {
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  return e.c_str();
}

bool parse_int(const std::string& text, int64_t& out) {
  const char* end = text.data() + text.size();
  auto res = std::from_chars(text.data(), end, out);
  return !text.empty() && res.ec == std::errc() && res.ptr == end;
}

bool parse_double(const std::string& text, double& out) {
  const char* end = text.data() + text.size();
  auto res = std::from_chars(text.data(), end, out, std::chars_format::general);
  return !text.empty() && res.ec == std::errc() && res.ptr == end && std::isfinite(out);
}

// YAML 1.2 core-schema spellings only: "yes"/"on" are rejected rather than guessed at.
bool parse_bool(const std::string& text, bool& out) {
  if (text == "true" || text == "True" || text == "TRUE") {
    out = true;
    return true;
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    out = false;
    return true;
  }
  return false;
}

// ---- The schema's building blocks -----------------------------------------------------------------

// Which strings a string key accepts.
struct StringRule {
  const char* text;                     // for help and messages
  bool (*accepts)(const std::string&);  // nullptr: any string
};

bool is_run_name(const std::string& s) {
  if (s.empty() || s == "." || s == "..") return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
}
const StringRule kAnyString{"any string", nullptr};
const StringRule kRunName{"non-empty [A-Za-z0-9._-], not . or ..", is_run_name};

bool is_host_list(const std::string& s) {
  std::vector<HostSlots> hosts;
  return parse_host_list(s, &hosts);
}
bool is_env_list(const std::string& s) {
  std::vector<EnvSetting> env;
  return parse_env_list(s, &env);
}
bool is_time_limit(const std::string& s) {
  int64_t seconds = 0;
  return parse_time_limit(s, &seconds);
}
const StringRule kHostList{"empty, or host[:slots] entries separated by commas, e.g. \"n1:4,n2:4\"", is_host_list};
const StringRule kEnvList{"empty, or NAME=value / NAME entries separated by spaces", is_env_list};
const StringRule kTimeLimit{"HH:MM:SS (hours may exceed 24), more than 0", is_time_limit};

enum class Type { Int, IntOrWord, Double, Bool, String, Choice };

std::string type_name(Type t, const std::string& word) {
  switch (t) {
    case Type::Int: return "int";
    case Type::IntOrWord: return "int|" + word;
    case Type::Double: return "double";
    case Type::Bool: return "bool";
    case Type::String: return "string";
    case Type::Choice: return "choice";
  }
  return "?";
}

// One configuration key. The three functions read and write the field the key names.
struct Key {
  std::string section;  // "moe"
  std::string name;     // "top_k"
  std::string path;     // "moe.top_k"
  Type type = Type::Int;
  std::string accepted;  // the accepted range or choices, as text
  std::string word;      // Type::IntOrWord: the word accepted in place of an int
  std::string doc;
  std::function<std::string(const TrainConfig&)> get;         // the value as text, unquoted
  std::function<bool(TrainConfig&, const std::string&)> set;  // false (nothing stored): not of the type
  std::function<bool(const TrainConfig&)> valid;              // the current value is accepted
};

// What a value of the key must look like, for "expected ..." messages.
std::string expected(const Key& k) {
  switch (k.type) {
    case Type::Int: return "an int";
    case Type::IntOrWord: return "an int or " + k.word;
    case Type::Double: return "a finite double";
    case Type::Bool: return "a bool (true or false)";
    case Type::String: return "a string";
    case Type::Choice: return "one of " + k.accepted;
  }
  return "?";
}

// The key's current value as it appears in messages, help and to_yaml (strings quoted).
std::string shown(const Key& k, const TrainConfig& cfg) {
  return k.type == Type::String ? quoted(k.get(cfg)) : k.get(cfg);
}

// "<path> = <value> is out of range; accepted: <range>" for a value of the right type that is not accepted.
std::string not_accepted(const Key& k, const TrainConfig& cfg) {
  return k.path + " = " + clipped(shown(k, cfg)) + (k.type == Type::String ? " is not valid" : " is out of range") +
         "; accepted: " + k.accepted;
}

// Declares the keys of one section: each call adds one key bound to one field of S.
template <typename S>
class SectionKeys {
 public:
  SectionKeys(std::vector<Key>& keys, const char* section, S TrainConfig::*member)
      : keys_(keys), section_(section), member_(member) {}

  void integer(const char* name, int64_t S::*field, Range range, const char* doc) {
    S TrainConfig::*m = member_;
    Key k = make(name, Type::Int, range.text(), doc);
    k.get = [m, field](const TrainConfig& c) { return format_number(c.*m.*field); };
    k.set = [m, field](TrainConfig& c, const std::string& text) {
      int64_t v = 0;
      if (!parse_int(text, v)) return false;
      c.*m.*field = v;
      return true;
    };
    k.valid = [m, field, range](const TrainConfig& c) { return range.contains(static_cast<double>(c.*m.*field)); };
    keys_.push_back(std::move(k));
  }

  // An int, or `word` standing for `word_value` (outside `range`).
  void integer_or_word(const char* name, int64_t S::*field, Range range, const char* word, int64_t word_value,
                       const char* doc) {
    S TrainConfig::*m = member_;
    Key k = make(name, Type::IntOrWord, range.text() + ", or " + word, doc);
    k.word = word;
    k.get = [m, field, word, word_value](const TrainConfig& c) {
      return c.*m.*field == word_value ? std::string(word) : format_number(c.*m.*field);
    };
    k.set = [m, field, word, word_value](TrainConfig& c, const std::string& text) {
      int64_t v = word_value;
      if (text != word && !parse_int(text, v)) return false;
      c.*m.*field = v;
      return true;
    };
    k.valid = [m, field, range, word_value](const TrainConfig& c) {
      return c.*m.*field == word_value || range.contains(static_cast<double>(c.*m.*field));
    };
    keys_.push_back(std::move(k));
  }

  template <typename T>  // double or float
  void real(const char* name, T S::*field, Range range, const char* doc) {
    S TrainConfig::*m = member_;
    Key k = make(name, Type::Double, range.text(), doc);
    k.get = [m, field](const TrainConfig& c) { return format_number(c.*m.*field); };
    k.set = [m, field](TrainConfig& c, const std::string& text) {
      double v = 0.0;
      if (!parse_double(text, v)) return false;
      c.*m.*field = static_cast<T>(v);
      return true;
    };
    k.valid = [m, field, range](const TrainConfig& c) { return range.contains(c.*m.*field); };
    keys_.push_back(std::move(k));
  }

  void boolean(const char* name, bool S::*field, const char* doc) {
    S TrainConfig::*m = member_;
    Key k = make(name, Type::Bool, "true, false", doc);
    k.get = [m, field](const TrainConfig& c) { return std::string(c.*m.*field ? "true" : "false"); };
    k.set = [m, field](TrainConfig& c, const std::string& text) {
      bool v = false;
      if (!parse_bool(text, v)) return false;
      c.*m.*field = v;
      return true;
    };
    k.valid = [](const TrainConfig&) { return true; };
    keys_.push_back(std::move(k));
  }

  void string(const char* name, std::string S::*field, StringRule rule, const char* doc) {
    S TrainConfig::*m = member_;
    Key k = make(name, Type::String, rule.text, doc);
    k.get = [m, field](const TrainConfig& c) { return c.*m.*field; };
    k.set = [m, field](TrainConfig& c, const std::string& text) {
      c.*m.*field = text;
      return true;
    };
    k.valid = [m, field, rule](const TrainConfig& c) { return rule.accepts == nullptr || rule.accepts(c.*m.*field); };
    keys_.push_back(std::move(k));
  }

  template <typename E>
  void choice(const char* name, E S::*field, std::vector<std::pair<std::string, E>> names, const char* doc) {
    S TrainConfig::*m = member_;
    std::string accepted;
    for (const auto& [text, value] : names) accepted += (accepted.empty() ? "" : ", ") + text;
    Key k = make(name, Type::Choice, accepted, doc);
    k.get = [m, field, names](const TrainConfig& c) {
      for (const auto& [text, value] : names)
        if (value == c.*m.*field) return text;
      return std::string("<invalid>");
    };
    k.set = [m, field, names](TrainConfig& c, const std::string& text) {
      for (const auto& [t, value] : names) {
        if (t == text) {
          c.*m.*field = value;
          return true;
        }
      }
      return false;
    };
    k.valid = [m, field, names](const TrainConfig& c) {
      return std::any_of(names.begin(), names.end(), [&](const auto& n) { return n.second == c.*m.*field; });
    };
    keys_.push_back(std::move(k));
  }

 private:
  Key make(const char* name, Type type, std::string accepted, const char* doc) const {
    Key k;
    k.section = section_;
    k.name = name;
    k.path = std::string(section_) + "." + name;
    k.type = type;
    k.accepted = std::move(accepted);
    k.doc = doc;
    return k;
  }

  std::vector<Key>& keys_;
  const char* section_;
  S TrainConfig::*member_;
};

// ---- The schema: every key, once, in the order of the sections and of to_yaml ----------------------

std::vector<Key> build_schema() {
  using A = Activation;
  const std::vector<std::pair<std::string, Activation>> activations = {
      {"relu", A::ReLU}, {"gelu", A::GELU}, {"swiglu", A::SwiGLU}};
  std::vector<Key> keys;

  SectionKeys<RunConfig> run(keys, "run", &TrainConfig::run);
  run.string("name", &RunConfig::name, kRunName, "name of the run; the default run directory is runs/<name>");
  run.string("dir", &RunConfig::dir, kAnyString, "run directory (log, resolved config); empty = runs/<run.name>");
  run.integer("seed", &RunConfig::seed, at_least(0), "random seed of initialisation, data order and router jitter");
  run.integer("steps", &RunConfig::steps, at_least(1), "training steps (optimizer updates)");
  run.integer("log_every", &RunConfig::log_every, at_least(1), "log training metrics every this many steps");
  run.integer("eval_every", &RunConfig::eval_every, at_least(0), "evaluate every this many steps; 0 = never");
  run.integer("eval_batches", &RunConfig::eval_batches, at_least(1), "batches per rank in each evaluation");
  run.integer("threads_per_rank", &RunConfig::threads_per_rank, at_least(1), "CPU threads of each rank");
  run.real("watchdog_timeout_s", &RunConfig::watchdog_timeout_s, above(0),
           "seconds without progress before the watchdog aborts the job (a rank stuck in a collective)");
  run.integer("max_nonfinite_steps", &RunConfig::max_nonfinite_steps, at_least(1),
              "consecutive steps with a non-finite loss or gradient before the run stops");
  run.real("peak_gflops", &RunConfig::peak_gflops, at_least(0),
           "one rank's peak GFLOP/s that MFU divides by; 0 = measured at start-up (a large GEMM, all ranks at once)");
  run.choice("device", &RunConfig::device, {{"cpu", Device::CPU}, {"cuda", Device::CUDA}},
             "where the model trains: cpu, or cuda (each rank uses the GPU of its local rank)");

  using M = ModelConfig;
  SectionKeys<M> model(keys, "model", &TrainConfig::model);
  model.integer("vocab_size", &M::vocab_size, M::kVocabSizeRange, "vocabulary size (tokens 0 .. vocab_size - 1)");
  model.integer("d_model", &M::d_model, M::kDModelRange, "model width; divisible by n_heads");
  model.integer("n_layers", &M::n_layers, M::kNLayersRange, "transformer blocks");
  model.integer("n_heads", &M::n_heads, M::kNHeadsRange, "attention heads per block");
  model.integer("n_kv_heads", &M::n_kv_heads, M::kNKvHeadsRange,
                "key/value heads, dividing n_heads (grouped-query attention); 0 = n_heads");
  model.integer("seq_len", &M::seq_len, M::kSeqLenRange, "tokens per training sequence");
  model.choice("norm", &M::norm, {{"rmsnorm", NormKind::RMSNorm}, {"layernorm", NormKind::LayerNorm}},
               "normalisation before attention and feed-forward");
  model.choice("positions", &M::positions, {{"rotary", PositionKind::Rotary}, {"learned", PositionKind::Learned}},
               "position encoding; rotary needs an even head dim d_model / n_heads");
  model.real("rope_theta", &M::rope_theta, M::kRopeThetaRange, "rotary base (10000 LLaMA, 1e6 Mixtral)");
  model.real("norm_eps", &M::norm_eps, M::kNormEpsRange, "epsilon of the norms");
  model.boolean("tie_embeddings", &M::tie_embeddings, "the output head shares the input embedding");
  model.integer("moe_every", &M::moe_every, M::kMoeEveryRange,
                "layer i (0-based) is MoE when (i + 1) % moe_every == 0; 1 = every layer");
  model.integer("dense_hidden", &M::dense_hidden, M::kDenseHiddenRange, "hidden size of the dense feed-forward layers");
  model.choice("dense_activation", &M::dense_activation, activations, "activation of the dense feed-forward layers");
  model.real("init_std", &M::init_std, M::kInitStdRange, "standard deviation of the normal weight initialisation");
  model.choice("recompute", &M::recompute,
               {{"none", Recompute::None}, {"experts", Recompute::Experts}, {"attention", Recompute::Attention},
                {"all", Recompute::All}},
               "what the backward recomputes instead of keeping: the experts' FFN activations, the attention "
               "projections, or both");
  model.choice("precision", &M::precision, {{"fp32", Precision::FP32}, {"bf16", Precision::BF16}},
               "matrix products in float32, or bfloat16 inputs with float32 outputs, master weights and state");

  using E = MoEConfig;
  SectionKeys<E> moe(keys, "moe", &TrainConfig::moe);
  moe.integer("num_experts", &E::num_experts, E::kNumExpertsRange, "routed experts per MoE layer, over all ranks");
  moe.integer("top_k", &E::top_k, E::kTopKRange, "experts each token is routed to; at most num_experts");
  moe.integer("expert_hidden", &E::expert_hidden, E::kExpertHiddenRange, "hidden size of each expert (per matrix)");
  moe.choice("activation", &E::activation, activations, "expert activation (swiglu: gate and up matrices)");
  moe.real("capacity_factor", &E::capacity_factor, E::kCapacityFactorRange,
           "training capacity per expert = factor * top_k * tokens / num_experts; <= 0 = dropless");
  moe.real("eval_capacity_factor", &E::eval_capacity_factor, E::kCapacityFactorRange,
           "the same at evaluation; <= 0 = dropless");
  moe.integer("min_capacity", &E::min_capacity, E::kMinCapacityRange, "lower bound of the capacity per expert");
  moe.choice("drop_policy", &E::drop_policy,
             {{"position", DropPolicy::Position},
              {"position_by_choice", DropPolicy::PositionByChoice},
              {"probs", DropPolicy::Probs}},
             "over capacity, who keeps an expert's slots: earlier tokens (position), every first choice before "
             "any second then by token (position_by_choice), or higher router probabilities (probs)");
  moe.choice("routing", &E::routing,
             {{"token_choice", Routing::TokenChoice}, {"expert_choice", Routing::ExpertChoice},
              {"hash", Routing::Hash}, {"table", Routing::Table}},
             "tokens choose their top_k experts, or each expert its capacity of the rank's tokens by score "
             "(expert_choice: sees the whole batch, future tokens included), or static routing by token id "
             "without a router: a seeded hash (hash) or the map of routing_table (table), weights 1/k "
             "(docs/routing.md)");
  moe.string("routing_table", &E::routing_table, kAnyString,
             "routing = table: file of 'ID: E1 .. Ek' lines ('FIRST-LAST:' ranges, '*:' the rest), token id -> "
             "its top_k experts (docs/routing.md, \"Table routing\")");
  moe.choice("score_function", &E::score_function,
             {{"softmax", ScoreFunction::Softmax}, {"sigmoid", ScoreFunction::Sigmoid}},
             "router scores from the logits: softmax over the experts, or sigmoid per expert (DeepSeek-V3)");
  moe.boolean("renormalize", &E::renormalize, "rescale each token's top_k router weights to sum to 1");
  moe.real("routed_scaling_factor", &E::routed_scaling_factor, E::kRoutedScalingFactorRange,
           "the combine weights are each token's top_k scores (renormalised if set) times this");
  moe.real("jitter_eps", &E::jitter_eps, E::kJitterEpsRange,
           "training only: router input times noise from U(1 - eps, 1 + eps); 0 = off");
  moe.real("aux_loss_coeff", &E::aux_loss_coeff, E::kAuxLossCoeffRange,
           "weight of the load-balancing loss; < 0 = by balancing: 0.01 with aux_loss, 0 (no loss) with aux_free "
           "or routing expert_choice, hash or table");
  moe.choice("aux_loss_scope", &E::aux_loss_scope,
             {{"local", AuxLossScope::Local}, {"global", AuxLossScope::Global}, {"sequence", AuxLossScope::Sequence}},
             "tokens the load-balancing loss counts: each rank's own (local), all ranks' (global), or each "
             "sequence's own, averaged over sequences (sequence)");
  moe.real("z_loss_coeff", &E::z_loss_coeff, E::kZLossCoeffRange,
           "weight of the router z-loss; < 0 = by routing: 0.001, 0 (no router) with routing hash or table");
  moe.integer("shared_experts", &E::shared_experts, E::kSharedExpertsRange,
              "shared experts every token passes through, besides its routed ones");
  moe.integer("shared_expert_hidden", &E::shared_expert_hidden, E::kSharedExpertHiddenRange,
              "hidden size of each shared expert; 0 = expert_hidden");
  moe.choice("balancing", &E::balancing, {{"aux_loss", Balancing::AuxLoss}, {"aux_free", Balancing::AuxFree}},
             "load balancing by the aux loss, or aux_free (per-expert routing biases; the aux loss off unless "
             "aux_loss_coeff is set)");
  moe.real("bias_update_rate", &E::bias_update_rate, E::kBiasUpdateRateRange, "aux_free: step of the bias update");
  moe.integer_or_word("routing_groups", &E::routing_groups, E::kRoutingGroupsRange, "ep", E::kRoutingGroupsPerRank,
                      "group-limited routing: experts in this many contiguous groups (a divisor of num_experts), "
                      "or ep (one per expert-parallel rank); each token keeps top_groups of them; 0 = off");
  moe.integer("top_groups", &E::top_groups, E::kTopGroupsRange,
              "routing_groups > 0: groups each token keeps, choosing its top_k experts inside them");
  moe.choice("group_score", &E::group_score, {{"top2_sum", GroupScore::Top2Sum}, {"max", GroupScore::Max}},
             "routing_groups > 0: a group's score for a token, the sum of its two highest selection scores "
             "(DeepSeek-V3) or the highest");
  moe.string("schedule", &E::schedule, StringRule{"events separated by ';' (docs/routing.md)", nullptr},
             "experts that grow and shrink: \"at STEP remove IDS\", \"at STEP add N\", \"at STEP split IDS "
             "[noise X]\", \"when share < X [for N] remove [min M]\", \"when share > X [for N] split [max M] "
             "[noise X]\", separated by ';'; empty = fixed experts");

  SectionKeys<ParallelConfig> parallel(keys, "parallel", &TrainConfig::parallel);
  parallel.integer("ep", &ParallelConfig::ep, at_least(0),
                   "expert-parallel size: divides the world size, num_experts divisible by it; 0 = world size");
  parallel.choice("backend", &ParallelConfig::backend, {{"mpi", DataBackend::MPI}, {"nccl", DataBackend::NCCL}},
                  "what moves tensors between ranks (gradients, tokens): mpi, or nccl (needs run.device = cuda)");

  using O = OptimizerConfig;
  SectionKeys<O> optim(keys, "optim", &TrainConfig::optim);
  optim.choice("name", &O::name, {{"adamw", OptimizerKind::AdamW}, {"sgd", OptimizerKind::SGD}}, "optimizer");
  optim.real("lr", &O::lr, O::kLrRange, "peak learning rate, reached at the end of warm-up");
  optim.real("min_lr", &O::min_lr, O::kMinLrRange, "learning rate at the end of the decay; <= lr");
  optim.integer("warmup_steps", &O::warmup_steps, O::kWarmupStepsRange, "steps of linear warm-up");
  optim.choice("schedule", &O::schedule,
               {{"cosine", LrDecay::Cosine}, {"linear", LrDecay::Linear}, {"constant", LrDecay::Constant}},
               "decay from lr to min_lr after warm-up");
  optim.real("beta1", &O::beta1, O::kBetaRange, "adamw: decay of the first moment");
  optim.real("beta2", &O::beta2, O::kBetaRange, "adamw: decay of the second moment");
  optim.real("eps", &O::eps, O::kEpsRange, "adamw: epsilon of the denominator");
  optim.real("momentum", &O::momentum, O::kMomentumRange, "sgd: momentum; 0 = plain SGD");
  optim.real("weight_decay", &O::weight_decay, O::kWeightDecayRange, "decoupled weight decay of the weight matrices");
  optim.boolean("decay_norms_and_biases", &O::decay_norms_and_biases,
                "also decay norm gains and biases (the no-decay group); false keeps them undecayed");
  optim.real("grad_clip", &O::grad_clip, O::kGradClipRange, "clip the global gradient norm to this; 0 = off");
  optim.integer("grad_accum_steps", &O::grad_accum_steps, O::kGradAccumStepsRange,
                "micro-batches of data.batch_size sequences per rank whose gradients make one optimizer step");

  using D = DataConfig;
  SectionKeys<D> data(keys, "data", &TrainConfig::data);
  data.choice("source", &D::source, {{"synthetic", DataSource::Synthetic}, {"tokens", DataSource::Tokens}},
              "synthetic: the built-in Markov-chain corpus; tokens: a token file (train_path)");
  data.string("train_path", &D::train_path, kAnyString,
              "token file to train on; source = tokens needs it or train_files");
  data.string("train_files", &D::train_files, kAnyString,
              "token files blended by weight, instead of train_path: PATH:WEIGHT,PATH:WEIGHT,... (relative "
              "weights; the same vocabulary; evaluation needs eval_path)");
  data.string("eval_path", &D::eval_path, kAnyString,
              "token file to evaluate on; empty = the last eval_fraction of the training sequences");
  data.string("tokenizer", &D::tokenizer, kAnyString,
              "tokenizer model file (SentencePiece .model, tokenizer.json) the token files must have been made "
              "with; empty = not checked");
  data.real("eval_fraction", &D::eval_fraction, D::kEvalFractionRange,
            "fraction of the training sequences held out when eval_path is empty");
  data.integer("batch_size", &D::batch_size, D::kBatchSizeRange, "sequences per rank per step");
  data.integer("synthetic_domains", &D::synthetic_domains, D::kSyntheticDomainsRange,
               "synthetic: domains, each a Markov chain on its own band of the vocabulary");
  data.integer("synthetic_branching", &D::synthetic_branching, D::kSyntheticBranchingRange,
               "synthetic: successors per token");
  data.integer("synthetic_sequences", &D::synthetic_sequences, D::kSyntheticSequencesRange,
               "synthetic: sequences in the corpus");
  data.boolean("document_mask", &D::document_mask,
               "tokens: attend only within each document of a packed sequence, positions restarting at each "
               "document (documents end with document_end_token)");
  data.integer_or_word("document_end_token", &D::document_end_token, D::kDocumentEndTokenRange, "auto",
                       D::kAutoEndToken,
                       "the token that ends a document, for document_mask; auto = the end-of-document token "
                       "the token file records (256 for the byte tokenizer)");

  SectionKeys<CheckpointConfig> checkpoint(keys, "checkpoint", &TrainConfig::checkpoint);
  checkpoint.string("dir", &CheckpointConfig::dir, kAnyString, "checkpoint directory; empty = <run.dir>/checkpoints");
  checkpoint.integer("every", &CheckpointConfig::every, at_least(0),
                     "save a checkpoint every this many steps; 0 = never");
  checkpoint.integer("keep", &CheckpointConfig::keep, at_least(1), "newest checkpoints kept; older ones are deleted");
  checkpoint.choice("resume", &CheckpointConfig::resume, {{"never", ResumeMode::Never}, {"auto", ResumeMode::Auto}},
                    "auto: continue from the newest complete checkpoint in dir, if there is one");
  checkpoint.string("init_from", &CheckpointConfig::init_from, kAnyString,
                    "a checkpoint directory to start from when there is none to resume (e.g. a moe-ckpt result)");

  // How moe-run and moe-submit start the job (docs/launch.md); moe-train ignores these two sections.
  // Counts of ranks, nodes, cores and GPUs are bounded so that any product of two fits an int64.
  constexpr double kMaxCount = 1 << 20;
  SectionKeys<LaunchConfig> launch(keys, "launch", &TrainConfig::launch);
  launch.integer("ranks", &LaunchConfig::ranks, closed(1, kMaxCount), "moe-run: MPI ranks in all (the world size)");
  launch.integer("ranks_per_node", &LaunchConfig::ranks_per_node, closed(0, kMaxCount),
                 "moe-run: ranks on each node; 0 = all on this node (or as hosts' slots say)");
  launch.string("hosts", &LaunchConfig::hosts, kHostList,
                "moe-run: hosts and their slots, \"a:2,b:2\" (mpirun --host); empty = this machine or hostfile");
  launch.string("hostfile", &LaunchConfig::hostfile, kAnyString,
                "moe-run: an OpenMPI hostfile (lines 'host slots=N'); empty = none");
  launch.choice("bind", &LaunchConfig::bind,
                {{"none", BindMode::None}, {"core", BindMode::Core}, {"socket", BindMode::Socket}},
                "pin each rank to its own run.threads_per_rank cores, to a socket, or not at all");
  launch.boolean("oversubscribe", &LaunchConfig::oversubscribe,
                 "allow more ranks x run.threads_per_rank on a node than it has cores (slow; tests, laptops)");
  launch.string("env", &LaunchConfig::env, kEnvList,
                "environment of every rank: NAME=value sets it, NAME alone passes the launching shell's value");
  launch.choice("launcher", &LaunchConfig::launcher, {{"mpirun", LauncherKind::Mpirun}, {"srun", LauncherKind::Srun}},
                "how ranks start: mpirun, or srun --mpi=pmix (inside a Slurm allocation)");
  launch.string("extra_args", &LaunchConfig::extra_args, kAnyString,
                "more arguments for mpirun (or srun), separated by spaces, put before moe-train");

  SectionKeys<SchedulerConfig> scheduler(keys, "scheduler", &TrainConfig::scheduler);
  scheduler.integer("nodes", &SchedulerConfig::nodes, closed(0, kMaxCount),
                    "moe-submit: nodes; 0 = launch.ranks / launch.ranks_per_node (1 when that is 0)");
  scheduler.integer("tasks_per_node", &SchedulerConfig::tasks_per_node, closed(0, kMaxCount),
                    "ranks per node; 0 = launch.ranks_per_node, or launch.ranks when that is 0");
  scheduler.integer("gpus_per_node", &SchedulerConfig::gpus_per_node, closed(0, kMaxCount),
                    "GPUs to ask for on each node (Slurm --gres=gpu:N, PBS ngpus); 0 = none");
  scheduler.integer("cpus_per_task", &SchedulerConfig::cpus_per_task, closed(0, kMaxCount),
                    "cores per rank; 0 = run.threads_per_rank");
  scheduler.string("time_limit", &SchedulerConfig::time_limit, kTimeLimit, "wall-clock limit of the job");
  scheduler.string("partition", &SchedulerConfig::partition, kAnyString, "Slurm partition; empty = the default");
  scheduler.string("queue", &SchedulerConfig::queue, kAnyString, "PBS queue; empty = the default");
  scheduler.string("account", &SchedulerConfig::account, kAnyString, "account charged; empty = the default");
  scheduler.string("job_name", &SchedulerConfig::job_name, kAnyString, "job name; empty = run.name");
  scheduler.string("output", &SchedulerConfig::output, kAnyString,
                   "job's stdout file; empty = <run.dir>/slurm-%j.out (Slurm) or <run.dir>/job.out (PBS)");
  scheduler.string("error", &SchedulerConfig::error, kAnyString, "job's stderr file; empty = with the output");
  scheduler.integer("signal_seconds_before_end", &SchedulerConfig::signal_seconds_before_end, at_least(0),
                    "Slurm: USR1 this many seconds before the time limit, so the run checkpoints; 0 = none");
  scheduler.boolean("requeue", &SchedulerConfig::requeue,
                    "a job stopped early (signal, time limit) puts itself back in the queue and resumes");
  return keys;
}

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = build_schema();
  return keys;
}

std::vector<std::string> section_names() {
  std::vector<std::string> names;
  for (const Key& k : schema())
    if (names.empty() || names.back() != k.section) names.push_back(k.section);
  return names;
}

const Key* find_key(const std::string& path) {
  for (const Key& k : schema())
    if (k.path == path) return &k;
  return nullptr;
}

// ---- Suggestions for unknown keys ------------------------------------------------------------------

// Edit distance with adjacent transpositions (optimal string alignment): "top_kk" -> "top_k" is 1.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// "; did you mean X?" for the closest candidate, or "" when none is within half the word's length.
std::string suggestion(const std::string& word, const std::vector<std::string>& candidates) {
  // The distance is at least the difference of the lengths, so a word more than twice as long as
  // every candidate is within half its length of none: skipped, which also bounds the work (the
  // distance takes time and memory of the product of the lengths) whatever the word.
  size_t longest = 0;
  for (const std::string& c : candidates) longest = std::max(longest, c.size());
  if (word.size() > 2 * longest) return "";
  const std::string* best = nullptr;
  size_t best_distance = 0;
  for (const std::string& c : candidates) {
    size_t dist = edit_distance(word, c);
    if (best == nullptr || dist < best_distance) {
      best = &c;
      best_distance = dist;
    }
  }
  if (best == nullptr || best_distance > std::max<size_t>(2, word.size() / 2)) return "";
  return "; did you mean " + *best + "?";
}

std::vector<std::string> all_paths() {
  std::vector<std::string> paths;
  for (const Key& k : schema()) paths.push_back(k.path);
  return paths;
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const std::string& item : items) s += (s.empty() ? "" : ", ") + item;
  return s;
}

// The message for an unknown key `section.name` of a known section.
std::string unknown_key(const std::string& section, const std::string& path) {
  std::string hint = suggestion(path, all_paths());
  if (!hint.empty()) return "unknown key " + clipped(path) + hint;
  std::vector<std::string> names;
  for (const Key& k : schema())
    if (k.section == section) names.push_back(k.name);
  return "unknown key " + clipped(path) + "; the keys of " + section + " are: " + join(names);
}

// The message for an unknown name at the top level of the file.
std::string unknown_section(const std::string& name) {
  if (find_key(name) != nullptr) {
    std::string section = name.substr(0, name.find('.'));
    return "'" + name + "' at the top level: a key goes inside its section (" + section + ":, then " +
           name.substr(section.size() + 1) + ": indented under it)";
  }
  for (const Key& k : schema())
    if (k.name == name)
      return "unknown section '" + clipped(name) + "'; did you mean " + k.path + " (inside " + k.section + ":)?";
  std::vector<std::string> sections = section_names();
  std::string hint = suggestion(name, sections);
  return "unknown section '" + clipped(name) + "'" + (hint.empty() ? "; the sections are: " + join(sections) : hint);
}

// ---- Applying values -------------------------------------------------------------------------------

// Parses `text` with the key's type, stores it and checks its range; `where` locates it in messages.
void assign(const Key& k, TrainConfig& cfg, const std::string& text, const std::string& where) {
  if (!k.set(cfg, text)) fail(where, k.path, ": expected ", expected(k), ", got '", clipped(text), "'");
  if (!k.valid(cfg)) fail(where, not_accepted(k, cfg));
}

const char* kind_of(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return "a scalar";
    case YAML::NodeType::Sequence: return "a sequence";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Undefined: return "an undefined node";
  }
  return "?";
}

// "file:line:column: " (1-based) for a node, or "file: " when yaml-cpp has no position for it.
std::string location(const std::string& source, const YAML::Node& n) {
  YAML::Mark m = n.Mark();
  if (m.is_null()) return source + ": ";
  return source + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1) + ": ";
}

void apply_yaml(const YAML::Node& root, const std::string& source, TrainConfig& cfg) {
  if (root.IsNull()) return;  // an empty file: every default
  if (!root.IsMap())
    fail(location(source, root), "expected a map of sections (", join(section_names()), ") at the top level, got ",
         kind_of(root));
  const std::vector<std::string> sections = section_names();
  std::set<std::string> seen_sections, seen_keys;
  for (const auto& entry : root) {
    const YAML::Node& name_node = entry.first;
    const YAML::Node& section_node = entry.second;
    if (!name_node.IsScalar())
      fail(location(source, name_node), "expected a section name at the top level, got ", kind_of(name_node));
    const std::string section = name_node.Scalar();
    if (std::find(sections.begin(), sections.end(), section) == sections.end())
      fail(location(source, name_node), unknown_section(section));
    if (!seen_sections.insert(section).second) fail(location(source, name_node), "section ", section, " appears twice");
    if (section_node.IsNull()) continue;  // a section with every key commented out
    if (!section_node.IsMap())
      fail(location(source, section_node), section, ": expected a map of keys (a section), got ",
           kind_of(section_node));
    for (const auto& item : section_node) {
      const YAML::Node& key_node = item.first;
      const YAML::Node& value = item.second;
      if (!key_node.IsScalar())
        fail(location(source, key_node), section, ": expected a key name, got ", kind_of(key_node));
      const std::string path = section + "." + key_node.Scalar();
      const Key* k = find_key(path);
      if (k == nullptr) fail(location(source, key_node), unknown_key(section, path));
      if (!seen_keys.insert(path).second) fail(location(source, key_node), path, " appears twice");
      if (value.IsNull())
        fail(location(source, key_node), path, " has no value; expected ", expected(*k),
             k->type == Type::String ? " (\"\" for an empty one)" : "");
      if (!value.IsScalar()) fail(location(source, value), path, ": expected ", expected(*k), ", got ", kind_of(value));
      assign(*k, cfg, value.Scalar(), location(source, value));
    }
  }
}

void apply_override(const std::string& arg, TrainConfig& cfg) {
  size_t eq = arg.find('=');
  if (eq == std::string::npos) fail("override '", clipped(arg), "' is not of the form section.key=value");
  const std::string path = arg.substr(0, eq);
  const Key* k = find_key(path);
  if (k == nullptr) fail("override '", clipped(arg), "': unknown key '", clipped(path), "'", suggestion(path, all_paths()));
  assign(*k, cfg, arg.substr(eq + 1), "override '" + clipped(arg) + "': ");
}

// Runs a section struct's validate(), whose messages name its keys ("top_k = 9 ..."), with the section
// added ("config: moe.top_k = 9 ...").
void in_section(const char* section, const std::function<void()>& validate) {
  try {
    validate();
  } catch (const InvalidArgument& e) {
    fail(section, ".", e.what());
  }
}

// The defaults that depend on other keys, filled once every value is known.
void resolve_derived(TrainConfig& cfg) {
  if (cfg.run.dir.empty()) cfg.run.dir = "runs/" + cfg.run.name;
  if (cfg.checkpoint.dir.empty()) cfg.checkpoint.dir = (std::filesystem::path(cfg.run.dir) / "checkpoints").string();
  if (cfg.moe.shared_expert_hidden == 0) cfg.moe.shared_expert_hidden = cfg.moe.expert_hidden;
  cfg.moe.aux_loss_coeff = cfg.moe.aux_loss_weight();
  cfg.moe.z_loss_coeff = cfg.moe.z_loss_weight();
}

// What a path that is not a regular file is, for the message that refuses it.
const char* file_kind(std::filesystem::file_type type) {
  using T = std::filesystem::file_type;
  switch (type) {
    case T::directory: return "a directory";
    case T::fifo: return "a FIFO";
    case T::character: return "a character device";
    case T::block: return "a block device";
    case T::socket: return "a socket";
    default: return "of another kind";
  }
}

// The whole file, after checking what it is: a FIFO or a device would block or never end, and a huge
// file would be read into memory on every rank. The read stops past the limit, should the file grow.
std::string read_file(const std::string& path) {
  const std::string name = clipped(path);
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (ec) fail("cannot open '", name, "': ", ec.message());
  if (status.type() != std::filesystem::file_type::regular)
    fail("cannot read '", name, "': it is ", file_kind(status.type()), "; a config is a regular file");
  const uintmax_t size = std::filesystem::file_size(path, ec);
  auto too_big = [&](uintmax_t bytes) {
    fail("cannot read '", name, "': it holds ", bytes, " bytes, more than the ", kMaxConfigBytesText, " (",
         kMaxConfigBytes, " bytes) a config may have");
  };
  if (!ec && size > kMaxConfigBytes) too_big(size);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) fail("cannot open '", name, "': ", std::generic_category().message(errno));
  std::string text;
  char buf[1 << 16];
  size_t n = 0;
  while (text.size() <= kMaxConfigBytes && (n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) fail("cannot read '", name, "': ", std::generic_category().message(err));
  if (text.size() > kMaxConfigBytes) too_big(text.size());
  return text;
}

// Pads `s` with spaces to `width` characters.
std::string padded(const std::string& s, size_t width) {
  return s + std::string(width > s.size() ? width - s.size() : 0, ' ');
}

}  // namespace

// ---- Public API ------------------------------------------------------------------------------------

void TrainConfig::validate() const {
  for (const Key& k : schema())
    if (!k.valid(*this)) fail(not_accepted(k, *this));
  // The sections whose struct validates itself, its messages naming the keys without their section.
  in_section("model", [&] { model.validate(); });
  in_section("moe", [&] { TransformerConfig{model, moe}.moe_layer_config().validate(); });
  try {
    parse_expert_schedule(moe.schedule);
  } catch (const InvalidArgument& e) {
    fail(e.what());
  }
  in_section("optim", [&] { optim.validate(); });
  in_section("data", [&] { data.validate(model.vocab_size); });
  if (parallel.backend == DataBackend::NCCL && run.device != Device::CUDA)
    fail("parallel.backend = nccl needs run.device = cuda (NCCL moves GPU memory), but run.device = ",
         to_string(run.device), "; accepted with run.device = cpu: parallel.backend = mpi");
}

TrainConfig parse_train_config(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides) {
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(yaml_text);
  } catch (const YAML::ParserException& e) {
    fail(source_name, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg);
  }
  if (documents.size() > 1) fail(source_name, ": holds ", documents.size(), " YAML documents; expected one");
  TrainConfig cfg;
  try {
    if (!documents.empty()) apply_yaml(documents[0], source_name, cfg);
  } catch (const YAML::Exception& e) {  // not expected after the checks above; named rather than escaping
    fail(source_name, ": ", e.what());
  }
  for (const std::string& arg : overrides) apply_override(arg, cfg);
  resolve_derived(cfg);
  cfg.validate();
  return cfg;
}

TrainConfig load_train_config(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  return parse_train_config(read_file(yaml_path), clipped(yaml_path), overrides);
}

int resolved_ep(const TrainConfig& cfg, int world_size) {
  return cfg.parallel.ep == 0 ? world_size : static_cast<int>(cfg.parallel.ep);
}

void validate_for_world(const TrainConfig& cfg, int world_size, const std::string& world_name) {
  const std::string world = world_name + " " + std::to_string(world_size);
  MOE_REQUIRE(world_size >= 1, "config: ", world, " must be >= 1");
  cfg.validate();
  const int64_t ep = cfg.parallel.ep == 0 ? world_size : cfg.parallel.ep;  // resolved_ep, before it fits an int
  const std::string ep_text = cfg.parallel.ep == 0 ? world + " (parallel.ep = 0)" : "parallel.ep = " + std::to_string(ep);
  MOE_REQUIRE(world_size % ep == 0, "config: ", ep_text, " does not divide ", world,
              "; accepted: a divisor of it, or 0 for all ranks");
  MOE_REQUIRE(cfg.moe.num_experts % ep == 0, "config: moe.num_experts = ", cfg.moe.num_experts, " is not divisible by ",
              ep_text, " (each rank of an expert-parallel group holds the same number of experts)");
  in_section("moe", [&] { cfg.moe.validate_routing_groups(ep); });
  validate_expert_schedule(TransformerConfig{cfg.model, cfg.moe}.moe_layer_config(), ep, cfg.run.steps);
}

std::string to_yaml(const TrainConfig& cfg) {
  std::vector<std::string> lines;  // "  key: value", aligned below before the comments are added
  size_t width = 0;
  for (const Key& k : schema()) {
    lines.push_back("  " + k.name + ": " + shown(k, cfg));
    width = std::max(width, lines.back().size());
  }
  std::ostringstream os;
  os << "# moe-train configuration, resolved: every key, defaults included (moe-train --help lists them).\n";
  const std::vector<Key>& keys = schema();
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i == 0 || keys[i].section != keys[i - 1].section) os << (i == 0 ? "" : "\n") << keys[i].section << ":\n";
    os << padded(lines[i], width) << "  # " << keys[i].doc << "\n";
  }
  return os.str();
}

std::string config_keys_help() {
  const TrainConfig defaults;
  std::vector<std::vector<std::string>> rows = {{"key", "type", "default", "accepted", "meaning"}};
  for (const Key& k : schema())
    rows.push_back({k.path, type_name(k.type, k.word), shown(k, defaults), k.accepted, k.doc});
  std::vector<size_t> width(4, 0);
  for (const auto& row : rows)
    for (size_t c = 0; c < width.size(); ++c) width[c] = std::max(width[c], row[c].size());
  std::ostringstream os;
  for (const auto& row : rows) {
    os << "  ";
    for (size_t c = 0; c < width.size(); ++c) os << padded(row[c], width[c]) << "  ";
    os << row[4] << "\n";
  }
  return os.str();
}

}  // namespace moe
