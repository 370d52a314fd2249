// Tests of the moe-train configuration (launch/config/train_config.h): defaults, the example configs,
// every kind of bad input with the words its message must contain, overrides, the checks that need
// the world size, and the to_yaml round trip.
#include "launch/config/train_config.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/model/transformer.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

namespace fs = std::filesystem;

// A config error: it starts with "config: " and contains every one of `parts`.
void expect_message(const std::string& message, const std::vector<std::string>& parts) {
  EXPECT_EQ(message.rfind("config: ", 0), 0u) << message;
  EXPECT_TRUE(contains_all(message, parts));
}

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_message([&] { parse_train_config(yaml, "test.yaml", overrides); });
}

TrainConfig parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return parse_train_config(yaml, "test.yaml", overrides);
}

// ---- Defaults and the example configs --------------------------------------------------------------

TEST(Config, DefaultsAreTheDocumentedOnes) {
  TrainConfig d;
  EXPECT_EQ(d.run.name, "run");
  EXPECT_EQ(d.run.steps, 300);
  EXPECT_EQ(d.run.eval_every, 100);
  EXPECT_DOUBLE_EQ(d.run.watchdog_timeout_s, 300.0);
  EXPECT_EQ(d.model.vocab_size, 256);
  EXPECT_EQ(d.model.d_model, 128);
  EXPECT_EQ(d.model.norm, NormKind::RMSNorm);
  EXPECT_EQ(d.model.positions, PositionKind::Rotary);
  EXPECT_EQ(d.model.moe_every, 2);
  EXPECT_EQ(d.model.dense_activation, Activation::SwiGLU);
  EXPECT_EQ(d.moe.num_experts, 8);
  EXPECT_EQ(d.moe.top_k, 2);
  EXPECT_DOUBLE_EQ(d.moe.capacity_factor, 1.25);
  EXPECT_DOUBLE_EQ(d.moe.eval_capacity_factor, 2.0);
  EXPECT_EQ(d.moe.drop_policy, DropPolicy::Position);
  EXPECT_EQ(d.moe.aux_loss_scope, AuxLossScope::Local);
  EXPECT_EQ(d.moe.score_function, ScoreFunction::Softmax);
  EXPECT_EQ(d.moe.routed_scaling_factor, 1.0f);
  EXPECT_EQ(d.moe.routing, Routing::TokenChoice);
  EXPECT_EQ(d.moe.balancing, Balancing::AuxLoss);
  EXPECT_EQ(d.parallel.ep, 0);
  EXPECT_EQ(d.parallel.backend, DataBackend::MPI);
  EXPECT_EQ(d.run.device, Device::CPU);
  EXPECT_EQ(d.optim.name, OptimizerKind::AdamW);
  EXPECT_DOUBLE_EQ(d.optim.lr, 3e-3);
  EXPECT_DOUBLE_EQ(d.optim.min_lr, 3e-4);
  EXPECT_EQ(d.optim.schedule, LrDecay::Cosine);
  EXPECT_EQ(d.optim.eps, 1e-8f);
  EXPECT_EQ(d.optim.weight_decay, 0.1f);  // one default, for AdamW and SGD alike
  EXPECT_EQ(d.data.source, DataSource::Synthetic);
  EXPECT_DOUBLE_EQ(d.data.eval_fraction, 0.05);
  EXPECT_EQ(d.checkpoint.keep, 3);
  EXPECT_EQ(d.checkpoint.resume, ResumeMode::Never);
  EXPECT_NO_THROW(d.validate());
  EXPECT_NO_THROW(validate_for_world(d, 1));
  EXPECT_NO_THROW(validate_for_world(d, 8));
}

TEST(Config, EmptyFileGivesTheDefaultsWithDerivedValuesFilled) {
  TrainConfig expected;
  expected.run.dir = "runs/run";
  expected.checkpoint.dir = "runs/run/checkpoints";
  expected.moe.shared_expert_hidden = expected.moe.expert_hidden;
  expected.moe.aux_loss_coeff = 0.01;
  expected.moe.z_loss_coeff = 0.001f;
  EXPECT_EQ(parse(""), expected);
  EXPECT_EQ(parse("# only a comment\n"), expected);
  // A section with every key commented out is an empty section.
  EXPECT_EQ(parse("moe:\n  # top_k: 1\n"), expected);
}

TEST(Config, DerivedDefaultsFollowTheOtherKeysAndExplicitValuesWin) {
  TrainConfig c = parse("run:\n  name: exp1\nmoe:\n  expert_hidden: 96\n");
  EXPECT_EQ(c.run.dir, "runs/exp1");
  EXPECT_EQ(c.checkpoint.dir, "runs/exp1/checkpoints");
  EXPECT_EQ(c.moe.shared_expert_hidden, 96);
  c = parse("run:\n  dir: /scratch/x/\ncheckpoint:\n  dir: ''\nmoe:\n  shared_expert_hidden: 32\n");
  EXPECT_EQ(c.run.dir, "/scratch/x/");
  EXPECT_EQ(c.checkpoint.dir, "/scratch/x/checkpoints");
  EXPECT_EQ(c.moe.shared_expert_hidden, 32);
}

TEST(Config, AuxLossCoefficientDefaultsByBalancing) {
  // aux_free balances by its biases: the loss is off unless asked for; aux_loss defaults to 0.01.
  EXPECT_EQ(parse("").moe.aux_loss_coeff, 0.01f);
  EXPECT_EQ(parse("moe:\n  balancing: aux_free\n").moe.aux_loss_coeff, 0.0f);
  EXPECT_EQ(parse("moe:\n  balancing: aux_free\n  aux_loss_coeff: 0.002\n").moe.aux_loss_coeff, 0.002f);
  EXPECT_EQ(parse("moe:\n  balancing: aux_loss\n  aux_loss_coeff: 0\n").moe.aux_loss_coeff, 0.0f);
  EXPECT_EQ(parse("moe:\n  aux_loss_coeff: -1\n").moe.aux_loss_coeff, 0.01f);
  // The resolved config states the value in force.
  EXPECT_NE(to_yaml(parse("moe:\n  balancing: aux_free\n")).find("aux_loss_coeff: 0 "), std::string::npos);
}

TEST(Config, EveryExampleConfigLoadsAndValidatesForTwoRanks) {
  const fs::path dir = fs::path(MOE_SOURCE_DIR) / "configs";
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    names.push_back(entry.path().filename().string());
    SCOPED_TRACE(entry.path().string());
    TrainConfig c;
    ASSERT_NO_THROW(c = load_train_config(entry.path().string(), {}));
    EXPECT_NO_THROW(validate_for_world(c, 2));
    EXPECT_NO_THROW(TransformerConfig(c.model, c.moe).validate());
    // Every example sets its own name, so runs of different examples do not share a directory.
    EXPECT_EQ(c.run.name + ".yaml", entry.path().filename().string());
  }
  for (const char* required : {"tiny.yaml", "small.yaml", "gpu-example.yaml"})
    EXPECT_NE(std::find(names.begin(), names.end(), required), names.end()) << required << " missing";
}

TEST(Config, TinyIsSmallEnoughForTheDefaultJob) {
  TrainConfig c = load_train_config(std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml", {});
  EXPECT_LE(c.model.d_model, 64);
  EXPECT_LE(c.model.n_layers, 2);
  EXPECT_LE(c.run.steps, 1000);  // about a minute on 2 CPU ranks
  EXPECT_EQ(c.data.source, DataSource::Synthetic);
  EXPECT_EQ(resolved_ep(c, 2), 2);
}

// ---- Unknown keys and misplaced structure ----------------------------------------------------------

TEST(Config, UnknownKeyNamesItsPathLineAndTheClosestKey) {
  expect_message(parse_error("run:\n  steps: 10\nmoe:\n  top_kk: 2\n"),
                 {"test.yaml:4:3:", "unknown key moe.top_kk", "did you mean moe.top_k?"});
  expect_message(parse_error("model:\n  dmodel: 64\n"), {"unknown key model.dmodel", "did you mean model.d_model?"});
  // Nothing close: the section's keys are listed instead.
  expect_message(parse_error("optim:\n  learning_rate_schedule_kind: 1\n"),
                 {"unknown key optim.learning_rate_schedule_kind", "the keys of optim are: name, lr, min_lr"});
}

TEST(Config, UnknownNestedSectionIsAnUnknownKey) {
  expect_message(parse_error("moe:\n  top_k: 2\n  router:\n    noise: 0.1\n"),
                 {"test.yaml:3:3:", "unknown key moe.router"});
}

TEST(Config, UnknownTopLevelNames) {
  expect_message(parse_error("modle:\n  d_model: 64\n"),
                 {"test.yaml:1:1:", "unknown section 'modle'", "did you mean model?"});
  expect_message(parse_error("top_k: 2\n"), {"unknown section 'top_k'", "did you mean moe.top_k"});
  expect_message(parse_error("moe.top_k: 2\n"), {"'moe.top_k' at the top level", "inside its section"});
}

TEST(Config, StructureErrorsNameThePath) {
  expect_message(parse_error("model: 5\n"),
                 {"test.yaml:1:8:", "model: expected a map of keys (a section), got a scalar"});
  expect_message(parse_error("- run\n- model\n"), {"expected a map of sections", "got a sequence"});
  expect_message(parse_error("model:\n  d_model:\n    width: 64\n"), {"model.d_model: expected an int, got a map"});
  expect_message(parse_error("moe:\n  top_k: [1, 2]\n"),
                 {"test.yaml:2:10:", "moe.top_k: expected an int, got a sequence"});
  expect_message(parse_error("run:\n  name: [a]\n"), {"run.name: expected a string, got a sequence"});
  expect_message(parse_error("run:\n  steps:\n"), {"test.yaml:2:3:", "run.steps has no value; expected an int"});
  expect_message(parse_error("data:\n  eval_path:\n"), {"data.eval_path has no value", "\"\" for an empty one"});
  expect_message(parse_error("run:\n  steps: 1\n  steps: 2\n"), {"test.yaml:3:3:", "run.steps appears twice"});
  expect_message(parse_error("run:\n  steps: 1\nrun:\n  seed: 2\n"), {"section run appears twice"});
  expect_message(parse_error("run:\n  steps: 1\n---\nrun:\n  steps: 2\n"), {"holds 2 YAML documents"});
}

// ---- Wrong types and out-of-range values -----------------------------------------------------------

TEST(Config, WrongTypeNamesTheKeyTheValueAndTheType) {
  expect_message(parse_error("model:\n  d_model: abc\n"),
                 {"test.yaml:2:12:", "model.d_model: expected an int, got 'abc'"});
  expect_message(parse_error("run:\n  steps: 1.5\n"), {"run.steps: expected an int, got '1.5'"});
  expect_message(parse_error("run:\n  steps: 10abc\n"), {"run.steps: expected an int, got '10abc'"});
  expect_message(parse_error("optim:\n  lr: fast\n"), {"optim.lr: expected a finite double, got 'fast'"});
  expect_message(parse_error("optim:\n  lr: .inf\n"), {"optim.lr: expected a finite double, got '.inf'"});
  expect_message(parse_error("optim:\n  lr: nan\n"), {"optim.lr: expected a finite double, got 'nan'"});
  expect_message(parse_error("moe:\n  renormalize: maybe\n"),
                 {"moe.renormalize: expected a bool (true or false), got 'maybe'"});
  expect_message(parse_error("moe:\n  renormalize: yes\n"), {"moe.renormalize: expected a bool", "got 'yes'"});
  expect_message(parse_error("model:\n  norm: batchnorm\n"),
                 {"model.norm: expected one of rmsnorm, layernorm, got 'batchnorm'"});
  expect_message(parse_error("moe:\n  activation: ReLU\n"),
                 {"moe.activation: expected one of relu, gelu, swiglu, got 'ReLU'"});
  expect_message(parse_error("moe:\n  score_function: tanh\n"),
                 {"moe.score_function: expected one of softmax, sigmoid, got 'tanh'"});
  expect_message(parse_error("moe:\n  routing: expert\n"),
                 {"moe.routing: expected one of token_choice, expert_choice, hash, table, got 'expert'"});
  expect_message(parse_error("moe:\n  aux_loss_scope: batch\n"),
                 {"moe.aux_loss_scope: expected one of local, global, sequence, got 'batch'"});
  expect_message(parse_error("optim:\n  schedule: step\n"),
                 {"optim.schedule: expected one of cosine, linear, constant"});
  expect_message(parse_error("moe:\n  drop_policy: gshard\n"),
                 {"moe.drop_policy: expected one of position, position_by_choice, probs, got 'gshard'"});
  EXPECT_EQ(parse("moe:\n  drop_policy: position_by_choice\n").moe.drop_policy, DropPolicy::PositionByChoice);
}

TEST(Config, ValuesOfTheRightTypeAreAccepted) {
  TrainConfig c = parse(
      "run:\n  name: \"123\"\n  seed: 0\nmodel:\n  norm: layernorm\n  positions: learned\n  tie_embeddings: False\n"
      "moe:\n  renormalize: TRUE\n  capacity_factor: -1\n  jitter_eps: 1e-2\n  drop_policy: probs\n"
      "optim:\n  lr: 3e-3\n  name: sgd\n  schedule: constant\ndata:\n  eval_fraction: 0.5\n");
  EXPECT_EQ(c.run.name, "123");
  EXPECT_EQ(c.run.seed, 0);
  EXPECT_EQ(c.model.norm, NormKind::LayerNorm);
  EXPECT_EQ(c.model.positions, PositionKind::Learned);
  EXPECT_FALSE(c.model.tie_embeddings);
  EXPECT_TRUE(c.moe.renormalize);
  EXPECT_DOUBLE_EQ(c.moe.capacity_factor, -1.0);  // dropless
  EXPECT_EQ(c.moe.jitter_eps, 0.01f);  // held as the float the router uses
  EXPECT_EQ(c.moe.drop_policy, DropPolicy::Probs);
  EXPECT_DOUBLE_EQ(c.optim.lr, 3e-3);
  EXPECT_EQ(c.optim.name, OptimizerKind::SGD);
  EXPECT_EQ(c.optim.schedule, LrDecay::Constant);
  EXPECT_DOUBLE_EQ(c.data.eval_fraction, 0.5);
}

TEST(Config, OutOfRangeNamesTheKeyTheValueAndTheAcceptedRange) {
  expect_message(parse_error("run:\n  steps: 0\n"),
                 {"test.yaml:2:10:", "run.steps = 0 is out of range; accepted: >= 1"});
  expect_message(parse_error("run:\n  seed: -1\n"), {"run.seed = -1 is out of range; accepted: >= 0"});
  expect_message(parse_error("run:\n  watchdog_timeout_s: 0\n"),
                 {"run.watchdog_timeout_s = 0 is out of range; accepted: > 0"});
  expect_message(parse_error("model:\n  vocab_size: 1\n"), {"model.vocab_size = 1 is out of range; accepted: [2, 2147483647]"});
  expect_message(parse_error("moe:\n  jitter_eps: 1\n"), {"moe.jitter_eps = 1 is out of range; accepted: [0, 1)"});
  expect_message(parse_error("moe:\n  routed_scaling_factor: 0\n"),
                 {"moe.routed_scaling_factor = 0 is out of range; accepted: > 0"});
  expect_message(parse_error("moe:\n  aux_loss_coeff: .inf\n"),
                 {"moe.aux_loss_coeff: expected a finite double, got '.inf'"});
  expect_message(parse_error("optim:\n  lr: 0\n"), {"optim.lr = 0 is out of range; accepted: > 0"});
  expect_message(parse_error("optim:\n  grad_accum_steps: 0\n"),
                 {"optim.grad_accum_steps = 0 is out of range; accepted: >= 1"});
  expect_message(parse_error("run:\n  peak_gflops: -5\n"), {"run.peak_gflops = -5 is out of range; accepted: >= 0"});
  expect_message(parse_error("optim:\n  beta2: 1.0\n"), {"optim.beta2 = 1 is out of range; accepted: [0, 1)"});
  expect_message(parse_error("data:\n  eval_fraction: 0\n"),
                 {"data.eval_fraction = 0 is out of range; accepted: (0, 0.5]"});
  expect_message(parse_error("data:\n  eval_fraction: 0.6\n"),
                 {"data.eval_fraction = 0.6 is out of range; accepted: (0, 0.5]"});
  expect_message(parse_error("checkpoint:\n  keep: 0\n"), {"checkpoint.keep = 0 is out of range; accepted: >= 1"});
  expect_message(parse_error("run:\n  name: my run\n"),
                 {"run.name = \"my run\" is not valid; accepted: non-empty [A-Za-z0-9._-]"});
  expect_message(parse_error("run:\n  name: ''\n"), {"run.name = \"\" is not valid"});
  expect_message(parse_error("run:\n  name: ..\n"), {"run.name = \"..\" is not valid"});
}

TEST(Config, ValidateChecksEveryKeyOfAConfigBuiltInCode) {
  TrainConfig c;
  c.moe.min_capacity = -3;
  expect_message(error_message([&] { c.validate(); }), {"moe.min_capacity = -3 is out of range; accepted: >= 0"});
  c = TrainConfig{};
  c.model.init_std = std::numeric_limits<float>::quiet_NaN();
  expect_message(error_message([&] { c.validate(); }), {"model.init_std = nan is out of range; accepted: > 0"});
  c = TrainConfig{};
  c.moe.capacity_factor = std::numeric_limits<double>::infinity();
  expect_message(error_message([&] { c.validate(); }),
                 {"moe.capacity_factor = inf is out of range; accepted: any finite value"});
}

// ---- Cross-field checks ----------------------------------------------------------------------------

TEST(Config, CrossFieldChecksNameTheValuesInvolved) {
  expect_message(parse_error("model:\n  d_model: 100\n  n_heads: 3\n"),
                 {"config: model.d_model = 100 is not divisible by n_heads = 3"});
  expect_message(parse_error("model:\n  d_model: 12\n  n_heads: 4\n"),
                 {"config: model.positions = rotary needs an even head dim", "d_model / n_heads = 12 / 4 = 3"});
  EXPECT_NO_THROW(parse("model:\n  d_model: 12\n  n_heads: 4\n  positions: learned\n"));
  expect_message(parse_error("model:\n  n_heads: 4\n  n_kv_heads: 3\n"),
                 {"config: model.n_kv_heads = 3 does not divide n_heads = 4", "0 = n_heads"});
  const TrainConfig gqa = parse("model:\n  n_heads: 4\n  n_kv_heads: 2\n  rope_theta: 1e6\n  norm_eps: 1e-6\n");
  EXPECT_EQ(gqa.model.kv_heads(), 2);
  EXPECT_EQ(gqa.model.rope_theta, 1e6f);
  EXPECT_EQ(gqa.model.norm_eps, 1e-6f);
  EXPECT_EQ(parse("").model.kv_heads(), parse("").model.n_heads);
  expect_message(parse_error("moe:\n  num_experts: 4\n  top_k: 5\n"), {"config: moe.top_k = 5 must be <= num_experts = 4"});
  // Expert choice: the aux-loss default becomes 0; an explicit coefficient is refused naming both keys.
  EXPECT_EQ(parse("moe:\n  routing: expert_choice\n").moe.aux_loss_coeff, 0.0f);
  expect_message(parse_error("moe:\n  routing: expert_choice\n  aux_loss_coeff: 0.01\n"),
                 {"config: moe.routing = expert_choice has no load-balancing loss", "aux_loss_coeff = 0.01"});
  expect_message(parse_error("", {"moe.routing=expert_choice", "moe.balancing=aux_free"}),
                 {"config: moe.routing = expert_choice is balanced by construction", "balancing = aux_free"});
  expect_message(parse_error("optim:\n  lr: 0.001\n  min_lr: 0.01\n"),
                 {"config: optim.min_lr = 0.01 must be <= lr = 0.001"});
  expect_message(parse_error("data:\n  source: tokens\n"), {"config: data.source = tokens needs train_path"});
  EXPECT_NO_THROW(parse("data:\n  source: tokens\n  train_path: x.tok\n"));
  // A blend instead of one file: one of the two, and its text parses (data/data_config.h has the cases).
  EXPECT_EQ(parse("data:\n  source: tokens\n  train_files: a.tok:0.7,b.tok:0.3\n").data.train_files,
            "a.tok:0.7,b.tok:0.3");
  expect_message(parse_error("data:\n  source: tokens\n  train_path: x.tok\n  train_files: a.tok:1\n"),
                 {"config: data.train_path = 'x.tok' and train_files = 'a.tok:1' are both set; give one"});
  expect_message(parse_error("data:\n  source: tokens\n  train_files: a.tok:0\n"),
                 {"config: data.train_files = 'a.tok:0': entry 'a.tok:0' has weight 0, not a finite number > 0",
                  "accepted: PATH:WEIGHT entries"});
  expect_message(parse_error("data:\n  source: tokens\n"), {"needs train_path (a token file) or train_files"});
  // Documents: only token files have them; the end token is auto (-1) or a token id.
  expect_message(parse_error("data:\n  document_mask: true\n"),
                 {"config: data.document_mask = true needs source = tokens: the synthetic corpus has no documents"});
  EXPECT_EQ(parse("data:\n  source: tokens\n  train_path: x.tok\n  document_mask: true\n").data.document_end_token,
            DataConfig::kAutoEndToken);
  EXPECT_EQ(parse("data:\n  document_end_token: 2\n").data.document_end_token, 2);
  expect_message(parse_error("data:\n  document_end_token: -2\n"),
                 {"data.document_end_token = -2 is out of range; accepted: >= 0, or auto"});
  expect_message(parse_error("model:\n  vocab_size: 16\ndata:\n  synthetic_domains: 10\n"),
                 {"config: data.synthetic_domains = 10 needs model.vocab_size >= 2 * 10 = 20, but model.vocab_size = 16"});
  // The corpus is checked against the vocabulary only when it is the source.
  EXPECT_NO_THROW(parse("model:\n  vocab_size: 16\ndata:\n  source: tokens\n  train_path: x.tok\n  synthetic_domains: 10\n"));
  expect_message(parse_error("model:\n  vocab_size: 64\ndata:\n  synthetic_domains: 8\n  synthetic_branching: 9\n"),
                 {"config: data.synthetic_branching = 9 must be <= model.vocab_size / synthetic_domains = 64 / 8 = 8"});
}

TEST(Config, DeviceAndDataBackendChoices) {
  const TrainConfig c = parse("run:\n  device: cuda\nparallel:\n  backend: nccl\n");
  EXPECT_EQ(c.run.device, Device::CUDA);
  EXPECT_EQ(c.parallel.backend, DataBackend::NCCL);
  EXPECT_EQ(parse("", {"run.device=cuda"}).parallel.backend, DataBackend::MPI);  // MPI stages GPU tensors too
  expect_message(parse_error("run:\n  device: gpu\n"), {"run.device: expected one of cpu, cuda, got 'gpu'"});
  expect_message(parse_error("", {"parallel.backend=gloo"}),
                 {"override 'parallel.backend=gloo'", "expected one of mpi, nccl, got 'gloo'"});
  // NCCL moves GPU memory: with the CPU it is refused, naming both keys, from a file and an override.
  for (const std::string& message : {parse_error("parallel:\n  backend: nccl\n"),
                                     parse_error("run:\n  device: cuda\nparallel:\n  backend: nccl\n",
                                                 {"run.device=cpu"})})
    expect_message(message, {"parallel.backend = nccl needs run.device = cuda", "run.device = cpu"});
}

TEST(Config, WorldSizeChecks) {
  TrainConfig c;  // 8 experts, ep = 0
  EXPECT_EQ(resolved_ep(c, 4), 4);
  EXPECT_NO_THROW(validate_for_world(c, 4));
  expect_message(error_message([&] { validate_for_world(c, 3); }),
                 {"moe.num_experts = 8 is not divisible by the world size 3 (parallel.ep = 0)"});
  // moe-run and moe-submit name the ranks they will start.
  expect_message(error_message([&] { validate_for_world(c, 3, "launch.ranks ="); }),
                 {"moe.num_experts = 8 is not divisible by launch.ranks = 3 (parallel.ep = 0)"});
  c.parallel.ep = 2;
  EXPECT_EQ(resolved_ep(c, 4), 2);
  EXPECT_NO_THROW(validate_for_world(c, 4));  // 2 expert-parallel groups of 2 ranks
  expect_message(error_message([&] { validate_for_world(c, 3); }),
                 {"parallel.ep = 2 does not divide the world size 3; accepted: a divisor of it, or 0 for all ranks"});
  c.parallel.ep = 8;
  expect_message(error_message([&] { validate_for_world(c, 4); }),
                 {"parallel.ep = 8 does not divide the world size 4"});
  c.parallel.ep = 3;
  expect_message(error_message([&] { validate_for_world(c, 6); }),
                 {"moe.num_experts = 8 is not divisible by parallel.ep = 3"});
  expect_message(error_message([&] { validate_for_world(TrainConfig{}, 0); }), {"the world size 0 must be >= 1"});
  // The world-independent checks run too.
  c = TrainConfig{};
  c.moe.top_k = 9;
  expect_message(error_message([&] { validate_for_world(c, 2); }), {"moe.top_k = 9 must be <= num_experts = 8"});
}

// ---- Overrides -------------------------------------------------------------------------------------

TEST(Config, OverridesApplyInOrderWithTheKeysType) {
  TrainConfig c = parse("run:\n  steps: 50\nmoe:\n  top_k: 2\n",
                        {"run.steps=70", "moe.top_k=1", "run.name=sweep-3", "optim.lr=1e-3", "moe.renormalize=false",
                         "model.norm=layernorm", "data.eval_path=", "run.steps=80"});
  EXPECT_EQ(c.run.steps, 80);  // the later override wins
  EXPECT_EQ(c.moe.top_k, 1);
  EXPECT_EQ(c.run.name, "sweep-3");
  EXPECT_EQ(c.run.dir, "runs/sweep-3");  // derived after the overrides
  EXPECT_DOUBLE_EQ(c.optim.lr, 1e-3);
  EXPECT_FALSE(c.moe.renormalize);
  EXPECT_EQ(c.model.norm, NormKind::LayerNorm);
  EXPECT_EQ(c.data.eval_path, "");
  // Only the first '=' separates: the value may contain more.
  EXPECT_EQ(parse("", {"run.dir=/a=b"}).run.dir, "/a=b");
  // An override may complete what the file alone leaves invalid (cross-field checks run last).
  EXPECT_NO_THROW(parse("data:\n  source: tokens\n", {"data.train_path=t.tok"}));
}

TEST(Config, BadOverridesNameTheArgument) {
  expect_message(parse_error("", {"moe.top_k"}), {"override 'moe.top_k' is not of the form section.key=value"});
  expect_message(parse_error("", {"moe.topk=2"}),
                 {"override 'moe.topk=2': unknown key 'moe.topk'", "did you mean moe.top_k?"});
  expect_message(parse_error("", {"=2"}), {"override '=2': unknown key ''"});
  expect_message(parse_error("", {"model.d_model=abc"}),
                 {"override 'model.d_model=abc': model.d_model: expected an int, got 'abc'"});
  expect_message(parse_error("", {"moe.renormalize=1"}), {"override 'moe.renormalize=1'", "expected a bool"});
  expect_message(parse_error("", {"run.steps=0"}),
                 {"override 'run.steps=0': run.steps = 0 is out of range; accepted: >= 1"});
  expect_message(parse_error("", {"moe.top_k=9"}), {"moe.top_k = 9 must be <= num_experts = 8"});
}

// ---- Files -----------------------------------------------------------------------------------------

TEST(Config, YamlSyntaxErrorNamesTheFileLineAndColumn) {
  TempDir tmp("moe_test_config");
  const std::string path = tmp.write("bad.yaml", "run:\n  name: a\n  steps: [1, 2\nmodel:\n  d_model: 64\n");
  const std::string message = error_message([&] { load_train_config(path, {}); });
  expect_message(message, {"YAML syntax error"});
  EXPECT_NE(message.find(path + ":"), std::string::npos) << message;
  // yaml-cpp reports where it noticed the missing ']': at line 4 ("model:"), or 3 in other versions.
  EXPECT_TRUE(message.find(path + ":4:") != std::string::npos || message.find(path + ":3:") != std::string::npos)
      << message;

  const std::string tab = tmp.write("tab.yaml", "run:\n  steps: 1\n   seed: 2\n");
  expect_message(error_message([&] { load_train_config(tab, {}); }), {"tab.yaml:3:", "YAML syntax error"});
}

TEST(Config, UnreadableFileNamesThePathAndTheOsError) {
  TempDir tmp("moe_test_config");
  const std::string missing = tmp.file("missing.yaml");
  expect_message(error_message([&] { load_train_config(missing, {}); }),
                 {"cannot open '", "missing.yaml': No such file or directory"});
  expect_message(error_message([&] { load_train_config(tmp.path(), {}); }), {"it is a directory"});
}

TEST(Config, PathsThatAreNotRegularFilesOrTooBigAreRefusedBeforeReading) {
  TempDir tmp("moe_test_config");
  // /dev/zero never ends, and a FIFO without a writer would block: both refused without being opened.
  expect_message(error_message([&] { load_train_config("/dev/zero", {}); }),
                 {"cannot read '/dev/zero': it is a character device; a config is a regular file"});
  const std::string fifo = tmp.file("fifo.yaml");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  expect_message(error_message([&] { load_train_config(fifo, {}); }), {"fifo.yaml': it is a FIFO"});
  expect_message(error_message([&] { load_train_config(tmp.path(), {}); }), {"it is a directory"});
  // One byte over the limit (a sparse file: nothing is written to disk).
  const std::string big = tmp.file("big.yaml");
  std::ofstream(big).close();
  fs::resize_file(big, (16 << 20) + 1);
  expect_message(error_message([&] { load_train_config(big, {}); }),
                 {"big.yaml': it holds 16777217 bytes, more than the 16 MiB (16777216 bytes) a config may have"});
}

// A 1 MB key and a 10 MB value, in the file or in an override: the message quotes 80 characters and
// the size, and the "did you mean" search skips a key no valid key is close to (the edit distance of
// a 1 MB key with every key took half a minute and 350 MB).
TEST(Config, HugeKeysAndValuesGiveShortMessagesQuickly) {
  const std::string key(1 << 20, 'k'), value(10 << 20, '7');
  const std::string key_shown = std::string(80, 'k') + "... (", value_shown = std::string(80, '7') + "... (10485760 bytes)";
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> messages = {
      parse_error("run:\n  ? " + key + "\n  : 1\n"),  // explicit keys: yaml-cpp limits implicit ones to 1024
      parse_error("? " + key + "\n: {steps: 1}\n"),
      parse_error("", {"run." + key + "=1"}),
      parse_error("", {key}),
      parse_error("run:\n  steps: 1" + value + "\n"),
      parse_error("", {"run.steps=" + value}),
      parse_error("", {"run.name=" + value + " x"}),
  };
  // An edit distance over the whole 1 MB key (~10^12 cell updates) would take many minutes; the bounded
  // search takes milliseconds, and parsing the 10 MB of YAML about two seconds on an idle core (up to
  // seven on a loaded machine, seen): 60 s separates the two without failing on a busy machine.
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 60.0);
  expect_message(messages[0], {"unknown key run." + key_shown.substr(0, 76), "(1048580 bytes); the keys of run are: name"});
  expect_message(messages[1], {"unknown section '" + key_shown, "1048576 bytes)'; the sections are: run"});
  expect_message(messages[2], {"override 'run.kkk", "(1048582 bytes)': unknown key 'run.kkk", "(1048580 bytes)'"});
  expect_message(messages[3], {"override '" + key_shown + "1048576 bytes)' is not of the form section.key=value"});
  expect_message(messages[4], {"run.steps: expected an int, got '1" + value_shown.substr(0, 79) + "... (10485761 bytes)'"});
  expect_message(messages[5], {"run.steps: expected an int, got '" + value_shown + "'"});
  expect_message(messages[6], {"run.name = \"" + value_shown.substr(0, 79) + "... (10485764 bytes) is not valid"});
  for (const std::string& m : messages) EXPECT_LT(m.size(), 600u) << m.substr(0, 600);
}

TEST(Config, ErrorsInAFileNameTheFile) {
  TempDir tmp("moe_test_config");
  const std::string path = tmp.write("typo.yaml", "moe:\n  num_expert: 4\n");
  expect_message(error_message([&] { load_train_config(path, {}); }),
                 {"typo.yaml:2:3: unknown key moe.num_expert", "did you mean moe.num_experts?"});
}

// ---- Printing --------------------------------------------------------------------------------------

TEST(Config, ToYamlRoundTripsEveryKey) {
  // A config where every section differs from the defaults, with strings YAML would otherwise misread.
  TrainConfig c = parse("", {"run.name=rt",
                             "run.dir=my \"dir\": # not a comment\\",
                             "run.seed=7",
                             "run.watchdog_timeout_s=12.5",
                             "model.d_model=96",
                             "model.n_heads=6",
                             "model.positions=learned",
                             "model.tie_embeddings=false",
                             "model.init_std=0.0123456789",
                             "moe.num_experts=6",
                             "moe.top_k=3",
                             "moe.capacity_factor=0",
                             "moe.jitter_eps=0.1",
                             "moe.drop_policy=probs",
                             "moe.aux_loss_scope=global",
                             "moe.balancing=aux_free",
                             "parallel.ep=3",
                             "run.device=cuda",
                             "parallel.backend=nccl",
                             "optim.name=sgd",
                             "optim.lr=0.1",
                             "optim.min_lr=1e-7",
                             "optim.schedule=linear",
                             "data.source=tokens",
                             "data.train_path=true",
                             "data.eval_path=123",
                             "checkpoint.dir=",
                             "checkpoint.resume=auto"});
  const std::string yaml = to_yaml(c);
  TrainConfig back = parse_train_config(yaml, "roundtrip.yaml");
  EXPECT_EQ(back, c) << yaml;
  EXPECT_EQ(back.run.dir, "my \"dir\": # not a comment\\");
  EXPECT_EQ(back.data.train_path, "true");
  EXPECT_EQ(back.model.init_std, 0.0123456789f);  // held as the float the model uses
  EXPECT_EQ(to_yaml(back), yaml);

  // Defaults, and every example, through a file.
  TempDir tmp("moe_test_config");
  TrainConfig d = parse("");
  EXPECT_EQ(load_train_config(tmp.write("d.yaml", to_yaml(d)), {}), d);
  for (const char* name : {"tiny.yaml", "small.yaml", "gpu-example.yaml"}) {
    TrainConfig e = load_train_config(std::string(MOE_SOURCE_DIR) + "/configs/" + name, {});
    EXPECT_EQ(parse_train_config(to_yaml(e), name), e) << name;
  }
}

TEST(Config, ToYamlListsEveryKeyInSchemaOrder) {
  const std::string yaml = to_yaml(parse(""));
  size_t run = yaml.find("\nrun:\n"), model = yaml.find("\nmodel:\n"), moe = yaml.find("\nmoe:\n");
  size_t checkpoint = yaml.find("\ncheckpoint:\n");
  ASSERT_NE(run, std::string::npos);
  EXPECT_LT(run, model);
  EXPECT_LT(model, moe);
  EXPECT_LT(moe, checkpoint);
  EXPECT_NE(yaml.find("  top_k: 2"), std::string::npos);
  EXPECT_NE(yaml.find("  lr: 0.003"), std::string::npos);
  EXPECT_NE(yaml.find("  name: \"run\""), std::string::npos);
}

TEST(Config, HelpHasOneLinePerKeyWithTypeDefaultAndAcceptedValues) {
  const std::string help = config_keys_help();
  std::istringstream lines(help);
  std::string line;
  int count = 0;
  bool top_k = false, norm = false, eval_fraction = false;
  while (std::getline(lines, line)) {
    ++count;
    if (line.find("moe.top_k ") != std::string::npos) {
      top_k = line.find("int") != std::string::npos && line.find(" 2 ") != std::string::npos &&
              line.find(">= 1") != std::string::npos && line.find("experts each token") != std::string::npos;
    }
    if (line.find("model.norm ") != std::string::npos)
      norm = line.find("choice") != std::string::npos && line.find("rmsnorm, layernorm") != std::string::npos;
    if (line.find("data.eval_fraction ") != std::string::npos)
      eval_fraction = line.find("double") != std::string::npos && line.find("(0, 0.5]") != std::string::npos;
  }
  EXPECT_TRUE(top_k) << help;
  EXPECT_TRUE(norm) << help;
  EXPECT_TRUE(eval_fraction) << help;
  // A header line, then one line per key: every key of the resolved YAML appears.
  int keys = 0;
  std::istringstream yaml(to_yaml(TrainConfig{}));
  std::string section;
  while (std::getline(yaml, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] != ' ') {
      section = line.substr(0, line.find(':'));
      continue;
    }
    ++keys;
    const std::string path = section + "." + line.substr(2, line.find(':') - 2);
    EXPECT_NE(help.find("  " + path + " "), std::string::npos) << path;
  }
  EXPECT_EQ(count, keys + 1);
  EXPECT_GE(keys, 60);
}

TEST(Config, MoEKeysAreTheMoELayersSettings) {
  TrainConfig c =
      parse("", {"model.d_model=64", "model.init_std=0.05", "moe.expert_hidden=96", "moe.num_experts=4", "moe.top_k=1",
                 "moe.activation=gelu", "moe.capacity_factor=1.5", "moe.eval_capacity_factor=-1", "moe.min_capacity=2",
                 "moe.drop_policy=probs", "moe.renormalize=false", "moe.jitter_eps=0.25", "moe.aux_loss_coeff=0.5",
                 "moe.aux_loss_scope=global", "moe.z_loss_coeff=0.125", "moe.score_function=sigmoid",
                 "moe.routed_scaling_factor=2.5", "model.seq_len=48"});
  EXPECT_EQ(parse("", {"moe.routing=expert_choice"}).moe.routing, Routing::ExpertChoice);
  // Static routing: its loss weights default to 0; a table is read while the config is validated.
  const TrainConfig hashed = parse("", {"moe.routing=hash"});
  EXPECT_EQ(hashed.moe.routing, Routing::Hash);
  EXPECT_EQ(hashed.moe.aux_loss_coeff, 0.0f);
  EXPECT_EQ(hashed.moe.z_loss_coeff, 0.0f);
  TempDir dir;
  const std::string table = dir.write("map.txt", "*: 0 1\n");
  EXPECT_EQ(parse("", {"moe.routing=table", "moe.routing_table=" + table}).moe.routing_table, table);
  const std::string bad = dir.write("bad.txt", "0: 0 1\n1: 0 9\n");
  expect_message(parse_error("", {"moe.routing=table", "moe.routing_table=" + bad}),
                 {"config: moe.routing_table = " + bad + ", line 2: expert 9 is outside [0, num_experts = 8)"});
  // The layers' settings are the moe section itself, with d_model and init_std from the model section.
  MoEConfig m = TransformerConfig{c.model, c.moe}.moe_layer_config();
  EXPECT_EQ(m.d_model, 64);
  EXPECT_FLOAT_EQ(m.init_std, 0.05f);
  EXPECT_EQ(m.expert_hidden, 96);
  EXPECT_EQ(m.num_experts, 4);
  EXPECT_EQ(m.top_k, 1);
  EXPECT_EQ(m.activation, Activation::GELU);
  EXPECT_DOUBLE_EQ(m.capacity_factor, 1.5);
  EXPECT_DOUBLE_EQ(m.eval_capacity_factor, -1.0);
  EXPECT_EQ(m.min_capacity, 2);
  EXPECT_EQ(m.drop_policy, DropPolicy::Probs);
  EXPECT_FALSE(m.renormalize);
  EXPECT_FLOAT_EQ(m.jitter_eps, 0.25f);
  EXPECT_FLOAT_EQ(m.aux_loss_coeff, 0.5f);
  EXPECT_EQ(m.aux_loss_scope, AuxLossScope::Global);
  EXPECT_FLOAT_EQ(m.z_loss_coeff, 0.125f);
  EXPECT_EQ(m.score_function, ScoreFunction::Sigmoid);
  EXPECT_FLOAT_EQ(m.routed_scaling_factor, 2.5f);
  EXPECT_EQ(m.seq_len, 48);  // from the model: the sequence aux-loss scope's sequences
  EXPECT_FLOAT_EQ(m.init_std, 0.05f);
  EXPECT_NO_THROW(m.validate());
}

TEST(Config, GroupLimitedRoutingKeysAndTheirChecks) {
  TrainConfig c = parse("moe:\n  routing_groups: 4\n  top_groups: 2\n  group_score: max\n");
  EXPECT_EQ(c.moe.routing_groups, 4);
  EXPECT_EQ(c.moe.top_groups, 2);
  EXPECT_EQ(c.moe.group_score, GroupScore::Max);
  EXPECT_EQ(TrainConfig{}.moe.routing_groups, 0);  // off by default
  // "ep": one group per expert-parallel rank, written back as it was given.
  c = parse("", {"moe.routing_groups=ep"});
  EXPECT_EQ(c.moe.routing_groups, MoEConfig::kRoutingGroupsPerRank);
  EXPECT_CONTAINS(to_yaml(c), "  routing_groups: ep ");
  EXPECT_EQ(parse(to_yaml(c)).moe.routing_groups, MoEConfig::kRoutingGroupsPerRank);
  EXPECT_CONTAINS(config_keys_help(), "moe.routing_groups");
  expect_message(parse_error("moe:\n  routing_groups: node\n"),
                 {"moe.routing_groups: expected an int or ep, got 'node'"});
  expect_message(parse_error("", {"moe.routing_groups=-2"}),
                 {"moe.routing_groups = -2 is out of range; accepted: >= 0, or ep"});
  expect_message(parse_error("", {"moe.group_score=sum"}),
                 {"moe.group_score: expected one of top2_sum, max, got 'sum'"});
  expect_message(parse_error("", {"moe.top_groups=0"}), {"moe.top_groups = 0 is out of range; accepted: >= 1"});
  // The groups must split the experts evenly, and the kept groups must hold top_k experts.
  expect_message(parse_error("", {"moe.routing_groups=3"}),
                 {"config: moe.routing_groups = 3 does not divide num_experts = 8; accepted for routing_groups: 0 "
                  "(off), a divisor of num_experts, or ep (one group per expert-parallel rank)"});
  expect_message(parse_error("", {"moe.routing_groups=2", "moe.top_groups=3"}),
                 {"config: moe.top_groups = 3 must be <= the 2 groups of routing_groups = 2"});
  expect_message(parse_error("", {"moe.routing_groups=4", "moe.top_k=3"}),
                 {"config: moe.top_groups = 1 groups of 2 experts (routing_groups = 4, num_experts = 8) hold fewer "
                  "than top_k = 3 experts; accepted: top_groups * num_experts / routing_groups >= top_k"});
  EXPECT_NO_THROW(parse("", {"moe.routing_groups=4", "moe.top_k=3", "moe.top_groups=2"}));
  // "ep" is checked once the expert-parallel size is known: 4 ranks make groups of 2 experts.
  c = parse("", {"moe.routing_groups=ep", "moe.top_k=3"});
  EXPECT_NO_THROW(validate_for_world(c, 2));
  expect_message(error_message([&] { validate_for_world(c, 4); }),
                 {"config: moe.top_groups = 1 groups of 2 experts (routing_groups = ep (4 expert-parallel ranks), "
                  "num_experts = 8) hold fewer than top_k = 3 experts"});
  c.moe.top_groups = 3;
  expect_message(error_message([&] { validate_for_world(c, 2); }),
                 {"config: moe.top_groups = 3 must be <= the 2 groups of routing_groups = ep (2 expert-parallel "
                  "ranks)"});
}

TEST(Config, MoeLayersFollowMoeEvery) {
  ModelConfig m;
  m.n_layers = 4;
  m.moe_every = 2;
  EXPECT_FALSE(m.is_moe_layer(0));
  EXPECT_TRUE(m.is_moe_layer(1));
  EXPECT_FALSE(m.is_moe_layer(2));
  EXPECT_TRUE(m.is_moe_layer(3));
  m.moe_every = 1;
  for (int64_t i = 0; i < 4; ++i) EXPECT_TRUE(m.is_moe_layer(i));
}

}  // namespace
}  // namespace moe
