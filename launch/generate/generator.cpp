// Text generation from a checkpoint (launch/generate/generator.h).
#include "launch/generate/generator.h"

#include <algorithm>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "core/cpu/gemm.h"
#include "core/parameters.h"
#include "core/timer.h"
#include "launch/trainer/train_checkpoint.h"
#include "launch/trainer/trainer.h"
#include "parallel/all_to_all_exchange.h"

namespace moe {

namespace {

// The checkpoint's run config, made fit for generation on `world_size` ranks. Every rank reads the same
// manifest and decides alike (the caller still agrees on the outcome).
TrainConfig generation_config(const std::string& dir, int world_size) {
  std::unique_ptr<CheckpointReader> reader;
  const Status st = CheckpointReader::open(dir, &reader);
  MOE_REQUIRE(st.ok(), "cannot read checkpoint: ", st.to_string(),
              "; give a checkpoint directory (RUN/checkpoints/step_N, with a MANIFEST)");
  TrainConfig cfg;
  try {
    cfg = parse_train_config(reader->manifest().config_yaml(), "'" + dir + "/MANIFEST' (config_yaml)");
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("the run config recorded in the checkpoint does not parse: ") + e.what());
  }
  // An expert schedule may have changed the experts' number: the layout says how many it holds now.
  const int64_t E = reader->manifest().layout().num_experts();
  cfg.moe.num_experts = E;
  cfg.moe.schedule = "";
  MOE_REQUIRE(cfg.moe.routing != Routing::ExpertChoice, "checkpoint '", dir, "' uses moe.routing = expert_choice, "
              "where each expert picks among a whole batch's tokens: generation, one token at a time, needs a "
              "routing that each token makes alone (token_choice, hash, table)");
  MOE_REQUIRE(world_size <= E && E % world_size == 0, "checkpoint '", dir, "' has ", E, " experts per MoE layer, ",
              "which ", world_size, " ranks cannot share (every rank holds E / ranks of them); accepted: a number ",
              "of ranks that divides ", E, ", e.g. 1 or ", E);
  cfg.parallel.ep = world_size;
  // Inference: no token dropped (every token gets its top-k experts, whatever the batch), and the
  // losses' settings only decide what is summed, never the output: the local scope needs no whole
  // sequences (the sequence scope would) and no collective (the global one would).
  cfg.moe.eval_capacity_factor = 0.0;
  cfg.moe.aux_loss_scope = AuxLossScope::Local;
  cfg.run.device = Device::CPU;
  return cfg;
}

}  // namespace

Generator::Generator(const std::string& path, Communicator& world) : world_(world) {
  std::string error;
  try {
    const Status found = resolve_checkpoint_dir(path, &dir_);
    MOE_REQUIRE(found.ok(), "cannot read checkpoint: ", found.to_string(),
                "; give a checkpoint directory (RUN/checkpoints/step_N) or a run directory");
    cfg_ = generation_config(dir_, world.size());
  } catch (const InvalidArgument& e) {
    error = e.what();
  }
  throw_if_any_rank_failed(world, error);
  // As the trainer runs (run_training): its threads per rank, and denormals flushed to zero before the
  // first OpenMP region starts the worker threads, so the arithmetic is the training's.
  set_num_threads(static_cast<int>(cfg_.run.threads_per_rank));
  flush_denormals_to_zero();
  groups_ = make_process_groups(world, world.size(), cfg_.moe.num_experts);
  model_ = std::make_unique<TransformerLM>(transformer_config(cfg_), static_cast<uint64_t>(cfg_.run.seed),
                                           [this] { return make_all_to_all_exchange(groups_, Stream::host()); });
  ParameterRegistry registry;
  model_->register_parameters(registry);
  try {
    load_model_weights(dir_, *model_, registry, groups_);
  } catch (const InvalidArgument& e) {  // DamagedCheckpoint too
    error = e.what();
  }
  throw_if_any_rank_failed(world, error);
}

int64_t Generator::max_length() const {
  const int64_t S = cfg_.model.seq_len;
  return cfg_.model.positions == PositionKind::Learned ? S : kRotaryLengthFactor * S;
}

void Generator::check(const std::vector<int32_t>& prompt, const GenerateOptions& options) const {
  const int64_t V = cfg_.model.vocab_size, P = static_cast<int64_t>(prompt.size());
  MOE_REQUIRE(P >= 1, "the prompt has no tokens; give at least one");
  for (int64_t i = 0; i < P; ++i)
    MOE_REQUIRE(prompt[i] >= 0 && prompt[i] < V, "the prompt's token ", i, " is ", prompt[i],
                ", outside the model's vocabulary [0, ", V, ") (model.vocab_size = ", V,
                "): was the prompt encoded with the tokenizer the model was trained with?");
  MOE_REQUIRE(options.max_new_tokens >= 0 && P + options.max_new_tokens <= max_length(), "the prompt's ", P,
              " tokens + ", options.max_new_tokens, " new ones exceed the ", max_length(), " this model allows (",
              cfg_.model.positions == PositionKind::Learned
                  ? "learned positions: the table's model.seq_len rows"
                  : "rotary positions: " + std::to_string(kRotaryLengthFactor) + " x model.seq_len",
              "); shorten the prompt or lower --max-new-tokens");
}

GenerateResult Generator::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                   const std::function<void(int32_t)>& on_token) {
  check(prompt, options);
  const int64_t V = cfg_.model.vocab_size, P = static_cast<int64_t>(prompt.size());

  const int64_t choosable = options.choosable > 0 ? std::min(options.choosable, V) : V;
  GenerateResult result;
  result.prompt_tokens = P;
  Tensor tokens = Tensor::from_ints({P}, prompt);
  {
    // The first products of each shape pay one-time setup (oneDNN's JIT kernels, the rotary table), which
    // measured several times the tiny config's prefill: one prefill and one decode step into a scratch
    // cache first, so that the speed printed is the model's.
    KVCache scratch = model_->make_kv_cache(1, P + 1);
    model_->forward_cached(tokens, scratch);
    model_->forward_cached(Tensor::from_ints({1}, {prompt[0]}), scratch);
  }
  KVCache cache = model_->make_kv_cache(1, P + options.max_new_tokens);
  double start = now_seconds();
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    const Tensor& logits = model_->forward_cached(tokens, cache);  // (n, V): the last row predicts the next
    const int64_t n = tokens.dim(0);
    int32_t next = 0;
    if (world_.rank() == 0)
      next = choose_token(std::span<const float>(logits.f32() + (n - 1) * V, static_cast<size_t>(choosable)),
                          options.sampling, static_cast<uint64_t>(step));
    world_.broadcast(&next, sizeof next, 0);  // every rank decodes the token rank 0 chose
    const double now = now_seconds();
    (step == 0 ? result.prefill_seconds : result.decode_seconds) += now - start;
    if (step > 0) ++result.decode_steps;
    if (next == options.end_of_document) {
      result.ended = true;
      break;
    }
    result.tokens.push_back(next);
    if (on_token) on_token(next);
    start = now_seconds();  // the caller's printing is not the model's time
    tokens = Tensor::from_ints({1}, {next});
  }
  return result;
}

}  // namespace moe
