// The training loop of moe-train (launch/trainer/trainer.h): the Trainer class, set up once, then
// resume, step, log, evaluate, save and finish.
#include "launch/trainer/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "core/cpu/gemm.h"
#include "core/random.h"
#include "core/timer.h"
#include "data/blended_source.h"
#include "data/data_loader.h"
#include "data/tokenizer.h"
#include "data/documents.h"
#include "launch/trainer/device_selection.h"
#include "launch/trainer/expert_changes.h"
#include "launch/trainer/routing_stats.h"
#include "launch/trainer/run_directory.h"
#include "launch/trainer/telemetry.h"
#include "launch/trainer/train_checkpoint.h"
#include "launch/trainer/watchdog.h"
#include "optim/aux_free_balancing.h"
#include "optim/grad_norm.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/grad_sync.h"
#include "parallel/local_rank.h"
#include "parallel/process_groups.h"

namespace moe {

namespace {
std::atomic<bool> g_stop_requested{false};
}  // namespace

void request_stop() { g_stop_requested.store(true); }

TransformerConfig transformer_config(const TrainConfig& c) { return TransformerConfig{c.model, c.moe}; }

namespace {

struct DataSources {
  std::unique_ptr<SequenceSource> train;
  std::unique_ptr<SequenceSource> eval_file;  // null: evaluation uses the held-out split of train
  IndexRange train_range, eval_range;
  int32_t document_end = -1;  // with data.document_mask: the token ending a document; else -1
  const SequenceSource& eval() const { return eval_file ? *eval_file : *train; }
};

// Opens token file `path` and checks it against the run. With data.document_mask, *document_end becomes
// the token ending its documents (resolve_document_end_token: the file's record for "auto").
std::unique_ptr<SequenceSource> open_token_source(const std::string& path, const TrainConfig& cfg,
                                                  int32_t* document_end) {
  auto src = std::make_unique<TokenFileSource>(path, cfg.model.seq_len);
  const TokenizerRecord& made_by = src->tokenizer();
  // A larger model vocabulary is fine (rows no token uses, as in padded vocabularies); a smaller one
  // would index past the embedding.
  MOE_REQUIRE(src->vocab_size() <= cfg.model.vocab_size, "data file '", path, "' has vocab_size ", src->vocab_size(),
              " (tokenizer ", describe_tokenizer(made_by), ") but model.vocab_size = ", cfg.model.vocab_size,
              "; set model.vocab_size >= ", src->vocab_size(), ", or tokenize the data for this model's vocabulary");
  if (!cfg.data.tokenizer.empty()) {
    const uint32_t fingerprint = tokenizer_file_fingerprint(cfg.data.tokenizer);
    MOE_REQUIRE(made_by.kind != TokenizerKind::Byte && made_by.fingerprint == fingerprint, "data file '", path,
                "' was made by tokenizer ", describe_tokenizer(made_by), ", but data.tokenizer = '", cfg.data.tokenizer,
                "' has fingerprint ", fingerprint_text(fingerprint), "; tokenize the data with data.tokenizer (moe-tokenize), or set it to the "
                "tokenizer that made the file");
  }
  if (cfg.data.document_mask)
    *document_end = resolve_document_end_token(cfg.data, made_by, src->vocab_size(), "token file '" + path + "'");
  return src;
}

// data.train_files: every file opened and checked (open_token_source), then blended; their documents must
// end with the same token.
std::unique_ptr<SequenceSource> open_blend(const TrainConfig& cfg, int32_t* document_end) {
  std::vector<std::unique_ptr<SequenceSource>> sources;
  std::vector<double> weights;
  std::vector<std::string> names;
  for (const WeightedFile& f : parse_train_files(cfg.data.train_files)) {
    int32_t end = -1;
    sources.push_back(open_token_source(f.path, cfg, &end));
    MOE_REQUIRE(names.empty() || end == *document_end, "data.train_files end documents with different tokens: ",
                names.front(), " with ", *document_end, ", '", f.path, "' with ", end,
                " (data.document_end_token = auto takes each file's); set data.document_end_token");
    *document_end = end;
    weights.push_back(f.weight);
    names.push_back("data.train_files '" + f.path + "'");
  }
  return std::make_unique<BlendedSource>(std::move(sources), weights, names, static_cast<uint64_t>(cfg.run.seed));
}

DataSources open_data(const TrainConfig& cfg, int world_size, bool eval_only) {
  DataSources d;
  const bool evaluates = cfg.run.eval_every > 0 || eval_only;
  if (cfg.data.source == DataSource::Synthetic) {
    d.train = std::make_unique<SyntheticSource>(cfg.data, cfg.model.vocab_size, cfg.model.seq_len,
                                                static_cast<uint64_t>(cfg.run.seed));
  } else if (!cfg.data.train_files.empty()) {
    // A held-out split of the blend's draws would read the same sequences as training draws.
    MOE_REQUIRE(!evaluates || !cfg.data.eval_path.empty(), "data.train_files needs data.eval_path to evaluate on "
                "(run.eval_every = ", cfg.run.eval_every, "): a blend has no held-out split; give a token file "
                "or set run.eval_every = 0");
    d.train = open_blend(cfg, &d.document_end);
  } else {
    d.train = open_token_source(cfg.data.train_path, cfg, &d.document_end);
  }
  if (!cfg.data.eval_path.empty()) {
    int32_t eval_end = d.document_end;
    d.eval_file = open_token_source(cfg.data.eval_path, cfg, &eval_end);
    MOE_REQUIRE(eval_end == d.document_end, "data.eval_path ends documents with token ", eval_end,
                ", the training data with ", d.document_end, " (data.document_end_token = auto takes each file's); "
                "set data.document_end_token");
    d.train_range = {0, d.train->num_sequences()};
    d.eval_range = {0, d.eval_file->num_sequences()};
  } else if (!cfg.data.train_files.empty()) {
    d.train_range = {0, d.train->num_sequences()};  // no evaluation (checked above)
  } else {
    DataSplit split = make_split(*d.train, cfg.data.eval_fraction);
    d.train_range = split.train;
    d.eval_range = split.eval;
  }
  MOE_REQUIRE(!evaluates || d.eval_range.size() >= world_size, "the held-out split has ",
              d.eval_range.size(), " sequences, fewer than the ", world_size,
              " ranks; raise data.eval_fraction or give data.eval_path");
  return d;
}

// A random id for a fresh run, agreed by all ranks: checkpoints carry it so that shards and a
// manifest of different runs are never mixed.
std::string new_run_id(Communicator& world) {
  char id[24] = {};
  if (world.rank() == 0)
    std::snprintf(id, sizeof id, "%016llx",
                  static_cast<unsigned long long>(mix64(static_cast<uint64_t>(now_seconds() * 1e9) ^
                                                        mix64(static_cast<uint64_t>(getpid())))));
  world.broadcast(id, sizeof id, 0);
  return std::string(id);
}

// Entropy of the token frequencies over (up to) the first 2000 sequences of `range`: the loss of a
// model that ignores context, which a trained model should beat by far.
double unigram_entropy(const SequenceSource& src, IndexRange range) {
  std::vector<double> count(src.vocab_size(), 0.0);
  std::vector<int32_t> seq(src.seq_tokens());
  double total = 0;
  for (int64_t i = range.begin; i < std::min(range.end, range.begin + 2000); ++i) {
    src.sequence(i, seq.data());
    for (int32_t t : seq) count[t] += 1;
    total += static_cast<double>(seq.size());
  }
  double h = 0;
  for (double c : count)
    if (c > 0) h -= c / total * std::log(c / total);
  return h;
}

// The start-up line on load balancing: what moe.balancing does to the aux loss, in words.
std::string balancing_summary(const TrainConfig& cfg) {
  char buf[320];
  const double coeff = cfg.moe.aux_loss_coeff;
  if (is_static(cfg.moe.routing))
    std::snprintf(buf, sizeof buf, "load balancing: none (moe.routing = %s: a fixed token id -> experts map, "
                  "weights 1/k, no router); no load-balancing loss and no z-loss (both off)",
                  to_string(cfg.moe.routing));
  else if (cfg.moe.routing == Routing::ExpertChoice)
    std::snprintf(buf, sizeof buf, "load balancing: by construction (moe.routing = expert_choice: every expert takes "
                  "its capacity of tokens); no load-balancing loss");
  else if (cfg.moe.balancing == Balancing::AuxLoss)
    std::snprintf(buf, sizeof buf, "load balancing: aux_loss, the load-balancing loss with moe.aux_loss_coeff = %g%s",
                  coeff, coeff > 0 ? "" : " (off)");
  else if (coeff > 0)
    std::snprintf(buf, sizeof buf,
                  "load balancing: aux_free, per-expert routing biases moved by %g per optimizer step; plus the "
                  "load-balancing loss with moe.aux_loss_coeff = %g",
                  cfg.moe.bias_update_rate, coeff);
  else
    std::snprintf(buf, sizeof buf,
                  "load balancing: aux_free, per-expert routing biases moved by %g per optimizer step; no "
                  "load-balancing loss (moe.aux_loss_coeff = 0, aux_free's default)",
                  cfg.moe.bias_update_rate);
  return buf;
}

// Expert-choice routing's start-up warning: what it sees, and what evaluation does (docs/routing.md).
std::string expert_choice_note(const TrainConfig& cfg) {
  char buf[640];
  std::snprintf(buf, sizeof buf,
                "routing: expert_choice: each expert takes the highest-scoring tokens of each rank's micro-batch "
                "(capacity = ceil(capacity_factor %g * top_k %lld * tokens / num_experts %lld)), looking at all of "
                "its %lld tokens at once: in a causal language model later tokens then steer how earlier ones are "
                "routed (information from the future leaks into the routing). Evaluation routes each eval "
                "micro-batch the same way, with eval_capacity_factor %g.",
                cfg.moe.capacity_factor, (long long)cfg.moe.top_k, (long long)cfg.moe.num_experts,
                (long long)(cfg.data.batch_size * cfg.model.seq_len), cfg.moe.eval_capacity_factor);
  return buf;
}

// Where a run starts, decided from the file system alone.
struct StartPlan {
  std::vector<std::string> resumable;          // complete checkpoints of checkpoint.dir to try, newest first
  std::vector<CheckpointListing> interrupted;  // saves cut short (no MANIFEST) newer than those: left to be saved over
  std::vector<CheckpointListing> damaged;      // a MANIFEST that does not open: a training start moves them aside
  RunDirectoryState run_dir;
};

std::string checkpoint_run_id(const std::string& dir, const std::string& key) {
  std::unique_ptr<CheckpointReader> reader;
  Status s = CheckpointReader::open(dir, &reader);
  MOE_REQUIRE(s.ok(), key, " '", dir, "' cannot be loaded: ", s.to_string());
  return reader->manifest().run_id();
}

// Every check of the directories before anything is written: the paths, the checkpoints, and whether
// the run may start in run.dir. Reads only the file system, so every rank reaches the same verdict.
StartPlan plan_start(const TrainConfig& cfg, RunMode mode) {
  const bool training = mode == RunMode::Train;
  check_run_paths(cfg, training);
  StartPlan plan;
  const std::vector<CheckpointListing> all = list_checkpoints(cfg.checkpoint.dir);
  // A fresh run would fail at its first save on a step that already exists: say so now.
  std::string newest;
  for (const CheckpointListing& c : all)
    if (c.complete) newest = c.dir;
  MOE_REQUIRE(!training || cfg.checkpoint.resume != ResumeMode::Never || cfg.checkpoint.every == 0 || newest.empty(),
              "checkpoint.dir '", cfg.checkpoint.dir, "' already holds checkpoints (newest: ", newest,
              "); set checkpoint.resume=auto to continue from it, or choose another run.dir or checkpoint.dir for a "
              "fresh run");
  const bool resuming = cfg.checkpoint.resume == ResumeMode::Auto || !training;
  for (auto c = all.rbegin(); c != all.rend(); ++c) {
    if (c->complete && resuming) plan.resumable.push_back(c->dir);
    else if (c->damaged() && training) plan.damaged.push_back(*c);
    else if (!c->complete && !c->damaged() && resuming && plan.resumable.empty()) plan.interrupted.push_back(*c);
  }
  std::string start_run_id;
  if (!plan.resumable.empty()) start_run_id = checkpoint_run_id(plan.resumable.front(), "checkpoint.dir");
  else if (!cfg.checkpoint.init_from.empty()) start_run_id = checkpoint_run_id(cfg.checkpoint.init_from, "checkpoint.init_from");
  MOE_REQUIRE(training || !start_run_id.empty(), "--eval-only needs a checkpoint: checkpoint.dir '",
              cfg.checkpoint.dir, "' holds no complete one and checkpoint.init_from is empty");
  plan.run_dir = read_run_directory(cfg.run.dir);
  if (training) {
    const std::string refusal = run_directory_refusal(plan.run_dir, cfg, start_run_id);
    MOE_REQUIRE(refusal.empty(), refusal);
  }
  return plan;
}

// plan_start on every rank, then the first collective: a verdict that differs between ranks (a
// path another node sees otherwise) still ends every rank alike.
StartPlan agreed_start_plan(const TrainConfig& cfg, RunMode mode, Communicator& world) {
  StartPlan plan;
  std::string error;
  try {
    plan = plan_start(cfg, mode);
  } catch (const InvalidArgument& e) {
    error = e.what();
  }
  throw_if_any_rank_failed(world, error);
  return plan;
}

// One run of moe-train on one rank. The constructor does everything that can fail on bad input
// (data files, the starting checkpoint's existence) before its first collective, so a bad input
// ends every rank alike; run() then resumes, trains (or only evaluates) and finishes.
class Trainer {
 public:
  Trainer(const TrainConfig& cfg, Communicator& world, const TrainOptions& options);
  TrainResult run();

 private:
  void print_banner() const;
  void resume();                // loads the newest sound checkpoint of start_, or starts a fresh run id (collective)
  std::string try_load(const std::string& dir, LoopState* loop);  // collective; "" or why `dir` is damaged
  void move_aside(const std::string& dir, const std::string& why);  // collective; rank 0 renames
  void open_run_directory();    // rank 0: DONE removed, logs cut back to the start, config.yaml, run_id
  bool step(int64_t step);      // one optimizer step; true when a rank asked to stop
  void log(int64_t step, double lr, double grad_norm);
  double evaluate();            // mean held-out loss over all ranks
  // With data.document_mask: the document positions of the batch `inputs` (host, B*S) in *device (on the
  // model's device, resized), for the model's forward; null without the mask.
  const Tensor* document_positions_of(const Tensor& inputs, Tensor* device);
  void save(int64_t step);
  void finish();                // the routing report and DONE
  std::string routing_description() const;  // the MoE layers' routing in words, for the report and TensorBoard
  // The run's config with the experts the layers have now (moe.num_experts) and, after `step`, the
  // schedule left to do: what a checkpoint records.
  TrainConfig current_config(int64_t step) const;
  // A fresh model with `num_experts` experts per MoE layer, its parameter registry and optimizer,
  // replacing the old ones (not collective).
  void build_model(int64_t num_experts);
  void change_experts(int64_t step);  // the changes moe.schedule makes after `step` (collective)
  // With moe.schedule: the experts per MoE layer of checkpoint `dir` (InvalidArgument when this run's
  // layout cannot take them), and a model with that many, fresh (not collective).
  int64_t checkpoint_experts(const std::string& dir) const;
  void start_with_experts(int64_t num_experts);

  const TrainConfig& cfg_;
  Communicator& world_;  // the world's control communicator (groups_.world.control): host values only
  const TrainOptions options_;
  const int rank_, W_;
  const bool leader_;
  const int64_t B_, S_, N_, A_;  // sequences per micro-batch, tokens per sequence and micro-batch, micro-batches
  const LocalPlacement placement_;
  const int gpu_;  // this rank's GPU, -1 for the CPU
  DataSources data_;
  const StartPlan start_;
  std::string resumed_from_;  // the checkpoint loaded, "" for a fresh start
  DataLoader loader_;
  ProcessGroups groups_;
  const Stream stream_;  // what the collectives on tensors run in: the host's, or the GPU's default stream
  // Rebuilt together when moe.schedule changes the number of experts (build_model).
  std::unique_ptr<TransformerLM> model_;
  std::unique_ptr<ParameterRegistry> registry_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<MoELayer*> moe_layers_;
  const LrSchedule schedule_;
  std::vector<int64_t> moe_layer_ids_;  // the model's layer index of each MoE layer
  ExpertScheduleRunner expert_schedule_;
  std::vector<std::string> expert_changes_;  // this run's log lines of them, for the routing report
  RoutingCounts routing_;
  IntervalSums interval_;
  PhaseTimes time_;           // this rank's, summed since the last log line
  int64_t timed_steps_ = 0;   // steps in time_ (a resumed run's first interval holds fewer than interval_)
  std::vector<int64_t> domains_;
  Tensor host_inputs_, host_targets_;  // the loader's batch
  Tensor inputs_, targets_;            // the same on the model's device
  Tensor positions_;                   // with data.document_mask: the batch's document positions there
  Watchdog watchdog_;

  TrainResult result_;
  int64_t consecutive_nonfinite_ = 0;
  int64_t first_step_ = 1;
  std::string run_id_;
  LogWrites writes_;                             // rank 0: the outcome of every log write
  std::unique_ptr<MetricsLog> metrics_;         // rank 0
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // rank 0
  PeakFlops peak_;
  double interval_start_ = 0, run_start_ = 0;
};

Trainer::Trainer(const TrainConfig& cfg, Communicator& world, const TrainOptions& options)
    : cfg_(cfg),
      world_(world),
      options_(options),
      rank_(world.rank()),
      W_(world.size()),
      leader_(rank_ == 0),
      B_(cfg.data.batch_size),
      S_(cfg.model.seq_len),
      N_(B_ * S_),
      A_(cfg.optim.grad_accum_steps),
      // Where this rank sits and the device it trains on, agreed by every rank before anything
      // else can fail or move a tensor.
      placement_(local_placement(world)),
      gpu_(select_device(cfg, world, placement_)),
      data_(open_data(cfg, W_, options.mode == RunMode::EvalOnly)),
      start_(agreed_start_plan(cfg, options.mode, world)),
      loader_(*data_.train, data_.train_range.begin, data_.train_range.end, rank_, W_, B_,
              static_cast<uint64_t>(cfg.run.seed)),
      groups_(make_process_groups(world, resolved_ep(cfg, W_), cfg.moe.num_experts, cfg.parallel.backend, gpu_)),
      stream_(cfg.run.device == Device::CUDA ? Stream{Device::CUDA, nullptr} : Stream::host()),
      schedule_(cfg.optim, cfg.run.steps),
      expert_schedule_(cfg, groups_.layout.ep, transformer_config(cfg).num_moe_layers()),
      routing_(transformer_config(cfg).num_moe_layers(), cfg.moe.num_experts,
               cfg.data.source == DataSource::Synthetic ? cfg.data.synthetic_domains : 0),
      interval_(static_cast<size_t>(transformer_config(cfg).num_moe_layers())),
      domains_(B_),
      host_inputs_(Tensor::empty({N_}, DType::I32)),
      host_targets_(Tensor::empty({N_}, DType::I32)),
      inputs_(Tensor::empty({N_}, DType::I32, cfg.run.device)),
      targets_(Tensor::empty({N_}, DType::I32, cfg.run.device)),
      watchdog_(cfg.run.watchdog_timeout_s, rank_, options.launcher, options.on_watchdog) {
  build_model(cfg.moe.num_experts);
  for (int64_t i = 0; i < cfg.model.n_layers; ++i)
    if (model_->moe_layer(i) != nullptr) moe_layer_ids_.push_back(i);
  if (leader_) print_banner();
}

void Trainer::build_model(int64_t num_experts) {
  optimizer_.reset();
  registry_.reset();
  model_.reset();
  groups_.layout = make_expert_layout(W_, rank_, groups_.layout.ep, num_experts);
  TrainConfig cfg = cfg_;
  cfg.moe.num_experts = num_experts;
  model_ = std::make_unique<TransformerLM>(transformer_config(cfg), static_cast<uint64_t>(cfg.run.seed),
                                           [this] { return make_all_to_all_exchange(groups_, stream_); },
                                           cfg.run.device);
  registry_ = std::make_unique<ParameterRegistry>();
  model_->register_parameters(*registry_);
  registry_->flatten_gradients();
  optimizer_ = make_optimizer(*registry_, cfg.optim);
  moe_layers_ = model_->moe_layers();
}

TrainConfig Trainer::current_config(int64_t step) const {
  TrainConfig cfg = cfg_;
  cfg.moe.num_experts = groups_.layout.num_experts;
  cfg.moe.schedule = expert_schedule_.remaining(step);
  return cfg;
}

void Trainer::change_experts(int64_t step) {
  for (const ExpertChange& change : expert_schedule_.due(step)) {
    std::map<std::string, Tensor> state = gather_training_state(*model_, *registry_, *optimizer_, groups_);
    for (auto& [name, tensor] : state) {
      int64_t layer = -1;
      if (expert_axis(name, &layer) < 0) continue;
      const size_t l = static_cast<size_t>(
          std::find(moe_layer_ids_.begin(), moe_layer_ids_.end(), layer) - moe_layer_ids_.begin());
      tensor = apply_expert_edit(change.edits.at(l), name, tensor);
    }
    std::vector<uint64_t> calls;
    for (MoELayer* m : moe_layers_) calls.push_back(m->calls());
    const int64_t optimizer_steps = optimizer_->steps_taken();
    build_model(change.new_experts);
    scatter_training_state(state, *model_, *registry_, *optimizer_, groups_);
    for (size_t l = 0; l < moe_layers_.size(); ++l) moe_layers_[l]->set_calls(calls[l]);
    optimizer_->set_steps_taken(optimizer_steps);
    routing_.follow(change.edits);
    for (size_t l = 0; l < moe_layers_.size(); ++l) {
      char line[160];
      std::snprintf(line, sizeof line, "step %lld, layer %lld: %lld -> %lld experts: ", (long long)step,
                    (long long)moe_layer_ids_[l], (long long)change.old_experts, (long long)change.new_experts);
      expert_changes_.push_back(line + change.what[l] + "; " + change.why);
      if (leader_) std::printf("expert change: %s\n", expert_changes_.back().c_str());
    }
  }
}

void Trainer::print_banner() const {
  std::printf("moe-train: %d rank(s), ep = %d, %lld experts (%lld per rank), %lld parameters (%lld active per "
              "token)%s\n",
              W_, groups_.layout.ep, (long long)cfg_.moe.num_experts, (long long)groups_.layout.experts_per_rank,
              (long long)model_->total_params(), (long long)model_->active_params_per_token(),
              options_.mode == RunMode::EvalOnly ? "; evaluation only" : "");
  std::printf("rank 0: local rank %d of %d on node %d (from %s); %s\n", placement_.local_rank,
              placement_.local_size, placement_.node, placement_.source.c_str(),
              gpu_ < 0 ? "CPU" : ("GPU " + std::to_string(gpu_) + " (its local rank's)").c_str());
  std::printf("resolved config:\n%s", to_yaml(cfg_).c_str());
  std::printf("%s\n", balancing_summary(cfg_).c_str());
  for (const std::string& w : cfg_.moe.warnings()) std::printf("warning: %s\n", w.c_str());
  if (cfg_.moe.routing == Routing::ExpertChoice) std::printf("%s\n", expert_choice_note(cfg_).c_str());
  std::printf("training data: %lld sequences of %lld tokens (held out: %lld); unigram entropy %.3f nats/token%s\n",
              (long long)data_.train_range.size(), (long long)S_, (long long)data_.eval_range.size(),
              unigram_entropy(*data_.train, data_.train_range),
              cfg_.data.source == DataSource::Synthetic
                  ? (", best achievable loss " +
                     std::to_string(static_cast<const SyntheticSource&>(*data_.train).corpus().entropy_rate()) +
                     " nats/token")
                        .c_str()
                  : "");
  if (A_ > 1)
    std::printf("gradient accumulation: %lld micro-batches of %lld sequences per rank per optimizer step\n",
                (long long)A_, (long long)B_);
  std::fflush(stdout);
}

TrainResult Trainer::run() {
  resume();
  if (options_.mode == RunMode::EvalOnly) {
    result_.final_eval_loss = evaluate();
    if (leader_) {
      std::printf("%s\n", eval_line(result_.steps_done, cfg_.run.steps, result_.final_eval_loss).c_str());
      std::error_code ec;
      std::filesystem::create_directories(cfg_.run.dir, ec);
      if (ec) writes_.fail(cfg_.run.dir, ec.value());
      MetricsLog(cfg_.run.dir + "/metrics.jsonl", writes_).write_eval(result_.steps_done, result_.final_eval_loss);
      result_.log_write_failure = writes_.failure();
    }
    return result_;
  }
  if (first_step_ > cfg_.run.steps) {
    if (leader_) {
      std::printf("nothing to train: %s is at step %lld and run.steps = %lld (raise run.steps to train on, or "
                  "evaluate it with --eval-only)\n",
                  resumed_from_.c_str(), (long long)result_.steps_done, (long long)cfg_.run.steps);
      // The run directory's run is finished: its marker, if a stop at the last step or a job script left none.
      if (start_.run_dir.run_id == run_id_ && !start_.run_dir.finished) {
        writes_.write_file(cfg_.run.dir + "/DONE", "steps " + std::to_string(result_.steps_done) + "\n");
        result_.log_write_failure = writes_.failure();
      }
    }
    return result_;
  }
  open_run_directory();

  // The peak MFU is measured against (every rank at once, as they will share the machine).
  peak_ = measure_peak_flops(world_, cfg_.run.peak_gflops, cfg_.run.device, cfg_.model.precision);
  if (leader_) {
    std::printf("MFU peak %.1f GFLOP/s over all ranks: %s\n", peak_.total_gflops, peak_.how.c_str());
    std::fflush(stdout);
  }

  interval_start_ = run_start_ = now_seconds();
  // From here on an error may be one rank's alone while the others wait in a collective: it must
  // not look like a setup error that every rank shares (InvalidArgument), so that moe-train
  // aborts the job instead of exiting quietly.
  try {
    for (int64_t step = first_step_; step <= cfg_.run.steps; ++step) {
      watchdog_.begin_step(step);
      const bool stop = this->step(step);
      if (!expert_schedule_.empty()) {
        watchdog_.phase("expert changes");
        change_experts(step);
      }
      if (cfg_.run.eval_every > 0 && (step % cfg_.run.eval_every == 0 || step == cfg_.run.steps)) {
        watchdog_.phase("evaluation");
        result_.final_eval_loss = evaluate();
        if (leader_) {
          std::printf("%s\n", eval_line(step, cfg_.run.steps, result_.final_eval_loss).c_str());
          metrics_->write_eval(step, result_.final_eval_loss);
          write_tensorboard_eval(*tensorboard_, step, result_.final_eval_loss);
        }
        interval_start_ = now_seconds();  // evaluation time is not training throughput
      }
      result_.steps_done = step;
      const bool periodic =
          cfg_.checkpoint.every > 0 && (step % cfg_.checkpoint.every == 0 || step == cfg_.run.steps);
      if (periodic || stop) {
        watchdog_.phase("checkpoint");
        LapTimer timer(cfg_.run.device);
        save(step);
        timer.lap(&time_.checkpoint);
      }
      watchdog_.end_step();
      if (stop) {
        result_.stopped_by_signal = true;
        if (leader_)
          std::printf("stopped by a signal after step %lld; the checkpoint above resumes it\n", (long long)step);
        break;
      }
    }
  } catch (const InvalidArgument& e) {
    throw std::runtime_error(std::string("during training: ") + e.what());
  }
  finish();
  return result_;
}

void Trainer::resume() {
  const bool training = options_.mode == RunMode::Train;
  if (leader_)
    for (const CheckpointListing& c : start_.interrupted)
      std::printf("ignoring incomplete checkpoint %s (%s)\n", c.dir.c_str(), c.problem.c_str());
  // So that this run's saves can write those steps anew, and keep-K counts only sound checkpoints.
  for (const CheckpointListing& c : start_.damaged) move_aside(c.dir, c.problem);
  LoopState loop;
  for (const std::string& dir : start_.resumable) {
    const std::string damage = try_load(dir, &loop);
    if (damage.empty()) {
      resumed_from_ = dir;
      break;
    }
    if (training) move_aside(dir, damage);
    else if (leader_) std::printf("passing over damaged checkpoint %s (%s)\n", dir.c_str(), damage.c_str());
  }
  if (resumed_from_.empty() && !cfg_.checkpoint.init_from.empty()) {
    const std::string damage = try_load(cfg_.checkpoint.init_from, &loop);
    if (!damage.empty()) throw InvalidArgument(damage);  // the user's choice: not replaced by another
    resumed_from_ = cfg_.checkpoint.init_from;
  }
  if (resumed_from_.empty()) {
    start_with_experts(cfg_.moe.num_experts);  // a checkpoint passed over may have left another number
    run_id_ = new_run_id(world_);
    return;
  }
  // Passing over a damaged checkpoint may have changed the start: the run directory rule again.
  if (training) {
    const std::string refusal = run_directory_refusal(start_.run_dir, cfg_, run_id_);
    MOE_REQUIRE(refusal.empty(), refusal);
  }
  first_step_ = loop.step + 1;
  result_.steps_done = loop.step;
  result_.skipped_steps = loop.skipped_steps;
  consecutive_nonfinite_ = loop.consecutive_nonfinite;
  const std::vector<int64_t>& counters = loop.shared_counters;
  interval_.from_state(loop.shared_sums, {counters.begin(), counters.begin() + std::min<size_t>(1, counters.size())});
  expert_schedule_.from_counters({counters.begin() + std::min<size_t>(1, counters.size()), counters.end()});
  if (!routing_.from_counters(loop.rank_counters)) {
    // Another world size: the per-rank counts since the last log line cannot be split anew; the
    // whole-run expert usage is kept as recorded, on rank 0 only (the report sums over ranks).
    for (size_t l = 0; l < routing_.kept_total.size() && l < loop.expert_usage.size(); ++l)
      if (leader_) routing_.kept_total[l] = loop.expert_usage[l];
  }
  if (leader_)
    std::printf("%s %s at step %lld\n", training ? "resumed from" : "loaded", resumed_from_.c_str(),
                (long long)loop.step);
}

// A checkpoint that does not fit this run (another model shape) ends it on every rank; one whose
// files are damaged on any rank gives that rank's message, for the caller to pass over it.
std::string Trainer::try_load(const std::string& dir, LoopState* loop) {
  std::string misfit, damage;
  try {
    if (!expert_schedule_.empty()) start_with_experts(checkpoint_experts(dir));
    run_id_ = load_training_checkpoint(dir, cfg_, *model_, *registry_, *optimizer_, groups_, loader_.steps_per_epoch(),
                                       loop);
    loader_.restore(loop->loader);
  } catch (const DamagedCheckpoint& e) {
    damage = e.what();
  } catch (const InvalidArgument& e) {
    misfit = e.what();
  }
  throw_if_any_rank_failed(world_, misfit);
  return first_error(world_, damage);
}

int64_t Trainer::checkpoint_experts(const std::string& dir) const {
  std::unique_ptr<CheckpointReader> reader;
  if (!CheckpointReader::open(dir, &reader).ok()) return groups_.layout.num_experts;  // the load says why
  const int64_t E = reader->manifest().layout().num_experts();
  const std::string problem = experts_problem(transformer_config(cfg_).moe_layer_config(), E, groups_.layout.ep);
  MOE_REQUIRE(problem.empty(), "checkpoint '", dir, "' has ", E, " experts per MoE layer, which this run cannot take: ",
              problem);
  return E;
}

void Trainer::start_with_experts(int64_t num_experts) {
  if (num_experts == groups_.layout.num_experts) return;
  build_model(num_experts);
  routing_ = RoutingCounts(static_cast<int64_t>(moe_layers_.size()), num_experts, routing_.num_domains);
  expert_schedule_.reset(num_experts);
}

void Trainer::move_aside(const std::string& dir, const std::string& why) {
  std::string error;
  if (leader_) {
    std::string to;
    Status s = move_checkpoint_aside(dir, &to);
    if (s.ok())
      std::printf("damaged checkpoint %s moved aside to %s (%s); moe-train never deletes it\n", dir.c_str(),
                  to.c_str(), why.c_str());
    else
      error = "cannot move the damaged checkpoint aside (" + why + "): " + s.message();
  }
  throw_if_any_rank_failed(world_, error);
}

void Trainer::open_run_directory() {
  if (!leader_) return;
  namespace fs = std::filesystem;
  const std::string dir = cfg_.run.dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) writes_.fail(dir, ec.value());
  // First what says the run finished (written again when this run completes), then the logs are cut
  // back to the step this run starts from: a crash in between leaves no DONE.
  for (const char* name : {"DONE", "routing_report.txt"})
    if (!fs::remove(dir + "/" + name, ec) && ec) writes_.fail(dir + "/" + name, ec.value());
  cut_back_metrics(dir + "/metrics.jsonl", first_step_ - 1, writes_);
  cut_back_event_files(dir + "/" + kTensorBoardDir, first_step_ - 1, writes_);
  if (start_.run_dir.holds_run)
    std::printf("run directory %s: metrics.jsonl and tensorboard/ kept up to step %lld, where this run starts\n",
                dir.c_str(), (long long)(first_step_ - 1));
  writes_.write_file(dir + "/run_id", run_id_ + "\n");
  writes_.write_file(dir + "/config.yaml", to_yaml(cfg_));
  tensorboard_ = std::make_unique<TensorBoardWriter>(dir + "/" + kTensorBoardDir, writes_);
  metrics_ = std::make_unique<MetricsLog>(dir + "/metrics.jsonl", writes_);
  if (!moe_layers_.empty()) write_tensorboard_routing(*tensorboard_, first_step_, routing_description());
}

std::string Trainer::routing_description() const {
  // A layer's settings: routing_groups = ep resolved to the number of groups.
  return moe_layers_.empty() ? "no MoE layers" : moe_layers_.front()->config().routing_description();
}

bool Trainer::step(int64_t step) {
  const size_t L = moe_layers_.size();
  registry_->zero_grads();
  routing_.clear_step();
  // This rank's sums over the micro-batches: cross-entropy, aux, z, the stop flag, then each layer's
  // router entropy.
  std::vector<double> sums(4 + L, 0.0);
  std::vector<double> entropy(L, 0.0);
  for (int64_t micro = 0; micro < A_; ++micro) {
    watchdog_.phase("data");
    LapTimer timer(cfg_.run.device);
    loader_.next_batch(host_inputs_.i32(), host_targets_.i32(), domains_.data());
    inputs_.copy_from(host_inputs_);
    targets_.copy_from(host_targets_);
    const Tensor* positions = document_positions_of(host_inputs_, &positions_);
    timer.lap(&time_.data);

    watchdog_.phase("forward");
    sums[0] += model_->forward(inputs_, targets_, /*training=*/true, positions);
    sums[1] += model_->aux_loss();
    sums[2] += model_->z_loss();
    timer.lap(&time_.forward);
    watchdog_.phase("backward");
    model_->backward();
    timer.lap(&time_.backward);
    for (MoELayer* layer : moe_layers_) {
      const double fwd = layer->stats().forward_time.exchanges(), bwd = layer->stats().backward_time.exchanges();
      time_.forward -= fwd;
      time_.backward -= bwd;
      time_.token_exchange += fwd + bwd;
    }
    routing_.add(moe_layers_, domains_, S_, entropy);
  }

  watchdog_.phase("gradient sync");
  LapTimer timer(cfg_.run.device);
  if (options_.hooks.stall_at(rank_, step)) {
    while (true) pause();  // the watchdog ends the job
  }
  if (rank_ == 0 && options_.hooks.nan_at(step)) {
    Tensor& grad = registry_->all()[0].grad;
    grad.reshape({grad.numel()}).rows(0, 1).fill(std::nanf(""));
  }
  sync_gradients(*registry_, groups_, stream_, A_);
  // One all-reduce for the losses, the stop flag and the router entropies, each then a mean over
  // micro-batches and ranks.
  sums[3] = g_stop_requested.load() ? 1.0 : 0.0;
  std::copy(entropy.begin(), entropy.end(), sums.begin() + 4);
  all_reduce(world_, sums.data(), static_cast<int64_t>(sums.size()));
  for (double& v : sums) v /= static_cast<double>(W_ * A_);
  timer.lap(&time_.grad_sync);

  watchdog_.phase("optimizer");
  const double grad_norm = global_grad_norm(*registry_, &groups_);
  const double lr = schedule_.at(step - 1);
  if (!std::isfinite(sums[0] + sums[1] + sums[2]) || !std::isfinite(grad_norm)) {
    ++result_.skipped_steps;
    ++consecutive_nonfinite_;
    if (leader_)
      std::printf("step %lld: non-finite loss or gradient (loss %g, grad norm %g): step skipped (%lld in a row, "
                  "limit run.max_nonfinite_steps = %lld)\n",
                  (long long)step, sums[0], grad_norm, (long long)consecutive_nonfinite_,
                  (long long)cfg_.run.max_nonfinite_steps);
    if (consecutive_nonfinite_ >= cfg_.run.max_nonfinite_steps)
      throw TrainingStopped("stopping at step " + std::to_string(step) + ": " +
                            std::to_string(consecutive_nonfinite_) +
                            " consecutive steps had a non-finite loss or gradient (run.max_nonfinite_steps = " +
                            std::to_string(cfg_.run.max_nonfinite_steps) + ")");
  } else {
    consecutive_nonfinite_ = 0;
    clip_gradients(*registry_, grad_norm, cfg_.optim.grad_clip);
    optimizer_->step(static_cast<float>(lr));
    if (cfg_.moe.balancing == Balancing::AuxFree)
      update_selection_bias(moe_layers_, routing_.step_routed, world_, cfg_.moe.bias_update_rate);
  }
  timer.lap(&time_.optimizer);
  result_.final_loss = sums[0];
  interval_.loss += sums[0];
  interval_.aux += sums[1];
  interval_.z += sums[2];
  for (size_t l = 0; l < L; ++l) interval_.entropy[l] += sums[4 + l];
  ++interval_.steps;
  ++timed_steps_;

  if (step % cfg_.run.log_every == 0 || step == cfg_.run.steps) {
    watchdog_.phase("logging");
    log(step, lr, grad_norm);
  }
  return sums[3] > 0;
}

void Trainer::log(int64_t step, double lr, double grad_norm) {
  // This rank's interval counts and phase times, summed over the ranks.
  std::vector<std::span<int64_t>> counts;
  add_rows(counts, routing_.routed);
  add_rows(counts, routing_.kept);
  all_reduce_packed(world_, counts);
  all_reduce(world_, time_.begin(), PhaseTimes::kCount);

  StepMetrics m;
  m.step = step;
  m.total_steps = cfg_.run.steps;
  m.loss = interval_.loss / interval_.steps;
  m.aux_loss = interval_.aux / interval_.steps;
  m.z_loss = interval_.z / interval_.steps;
  m.lr = lr;
  m.grad_norm = grad_norm;
  m.tokens_per_s = static_cast<double>(timed_steps_ * A_ * N_ * W_) / (now_seconds() - interval_start_);
  const double flops_per_token = model_->flops_per_token();
  m.model_gflops_per_rank = flops_per_token * m.tokens_per_s / W_ / 1e9;
  m.mfu = flops_per_token * m.tokens_per_s / (peak_.total_gflops * 1e9);
  for (int i = 0; i < PhaseTimes::kCount; ++i) m.time.begin()[i] = time_.begin()[i] / (W_ * timed_steps_);
  int64_t all_routed = 0, all_kept = 0;
  for (size_t l = 0; l < moe_layers_.size(); ++l) {
    MoELayerMetrics ml;
    ml.layer = moe_layer_ids_[l];
    ml.routed = routing_.routed[l];
    ml.kept = routing_.kept[l];
    ml.router_entropy = interval_.entropy[l] / interval_.steps;
    for (size_t e = 0; e < ml.routed.size(); ++e) {
      all_routed += ml.routed[e];
      all_kept += ml.kept[e];
    }
    m.load_max_over_mean = std::max(m.load_max_over_mean, ml.load_max_over_mean());
    m.moe_layers.push_back(std::move(ml));
  }
  m.dropped_frac = all_routed ? 1.0 - static_cast<double>(all_kept) / all_routed : 0.0;
  m.skipped_steps = result_.skipped_steps;
  m.eta_s = (now_seconds() - run_start_) / (step - (first_step_ - 1)) * (cfg_.run.steps - step);
  if (leader_) {
    std::printf("%s\n", progress_line(m).c_str());
    std::fflush(stdout);
    metrics_->write(m);
    write_tensorboard(*tensorboard_, m);
  }
  if (!expert_schedule_.empty()) expert_schedule_.observe(step, routing_.routed);
  routing_.clear_interval();
  interval_.clear();
  time_ = PhaseTimes{};
  timed_steps_ = 0;
  interval_start_ = now_seconds();
}

double Trainer::evaluate() {
  // Rank r evaluates its contiguous share of the held-out split, in fixed batches; every rank runs
  // the same number of batches because the MoE exchange is collective.
  const int64_t per_rank = data_.eval_range.size() / W_;
  const int64_t eval_b = std::min(B_, per_rank);
  const int64_t batches = std::min(cfg_.run.eval_batches, per_rank / eval_b);
  const IndexRange mine = rank_shard(data_.eval_range, rank_, W_);
  const int64_t n = eval_b * S_;
  std::vector<int32_t> seq(S_ + 1), in(n), tg(n);
  double sum = 0;
  for (int64_t b = 0; b < batches; ++b) {
    for (int64_t i = 0; i < eval_b; ++i) {
      data_.eval().sequence(mine.begin + b * eval_b + i, seq.data());
      std::copy(seq.begin(), seq.end() - 1, in.begin() + i * S_);
      std::copy(seq.begin() + 1, seq.end(), tg.begin() + i * S_);
    }
    const Tensor host_in = Tensor::from_ints({n}, in);
    const Tensor ti = host_in.to(model_->device());
    const Tensor tt = Tensor::from_ints({n}, tg).to(model_->device());
    Tensor positions;
    sum += model_->forward(ti, tt, /*training=*/false, document_positions_of(host_in, &positions));
  }
  return all_reduce_value(world_, sum) / static_cast<double>(W_ * batches);
}

const Tensor* Trainer::document_positions_of(const Tensor& inputs, Tensor* device) {
  if (data_.document_end < 0) return nullptr;
  const int64_t n = inputs.numel();
  Tensor host = Tensor::empty({n}, DType::I32);
  document_positions(inputs.i32(), n / S_, S_, data_.document_end, host.i32());
  resize_on(*device, {n}, model_->device(), DType::I32);
  device->copy_from(host);
  return device;
}

// The checkpoint of the state after `step` steps.
void Trainer::save(int64_t step) {
  options_.launcher.stop_if_gone(rank_);  // no new checkpoint once the launcher is gone
  LoopState loop;
  loop.step = step;
  loop.loader = loader_.position();
  loop.skipped_steps = result_.skipped_steps;
  loop.consecutive_nonfinite = consecutive_nonfinite_;
  loop.shared_sums = interval_.to_sums();
  // The interval's step count, then the schedule's condition streaks (identical on every rank too).
  loop.shared_counters = {interval_.steps};
  for (int64_t c : expert_schedule_.to_counters()) loop.shared_counters.push_back(c);
  loop.rank_counters = routing_.to_counters();
  loop.expert_usage = routing_.kept_total;
  std::vector<std::span<int64_t>> usage;
  add_rows(usage, loop.expert_usage);
  all_reduce_packed(world_, usage);
  const std::string dir = save_training_checkpoint(current_config(step), run_id_, loop, *model_, *registry_,
                                                   *optimizer_, groups_, world_,
                                                   options_.hooks.kill_in_save_at(rank_, step));
  if (leader_) std::printf("saved checkpoint %s\n", dir.c_str());
}

void Trainer::finish() {
  // The routing report: counts of the whole run, summed over ranks.
  std::vector<std::span<int64_t>> totals;
  add_rows(totals, routing_.kept_total);
  add_rows(totals, routing_.domain);
  all_reduce_packed(world_, totals);
  if (!leader_) return;
  const std::string report = routing_report(routing_, moe_layer_ids_, routing_description(), expert_changes_);
  std::printf("\nrouting report (whole run, all ranks):\n%s", report.c_str());
  writes_.write_file(cfg_.run.dir + "/routing_report.txt", report);
  // The completion marker job scripts look for (launch/launcher/job_script.h): no requeue after it.
  // Only when every step is done and every log write succeeded (write_file does nothing after a failure).
  if (result_.steps_done == cfg_.run.steps)
    writes_.write_file(cfg_.run.dir + "/DONE", "steps " + std::to_string(result_.steps_done) + "\n");
  result_.log_write_failure = writes_.failure();
  if (!writes_.ok()) {
    std::fprintf(stderr, "moe-train: trained %lld steps, but the logs in %s are incomplete (%s); no DONE\n",
                 (long long)result_.steps_done, cfg_.run.dir.c_str(), writes_.failure().c_str());
    return;
  }
  std::printf("done: %lld steps, final loss %.4f%s, run directory %s\n", (long long)result_.steps_done,
              result_.final_loss,
              result_.final_eval_loss >= 0 ? (", eval loss " + std::to_string(result_.final_eval_loss)).c_str() : "",
              cfg_.run.dir.c_str());
}

}  // namespace

TrainResult run_training(const TrainConfig& cfg, Communicator& world, const TrainOptions& options) {
  set_num_threads(static_cast<int>(cfg.run.threads_per_rank));
  flush_denormals_to_zero();  // before the first OpenMP region creates the worker threads
  Trainer trainer(cfg, world, options);
  return trainer.run();
}

}  // namespace moe
