// The training loop of moe-train (launch/trainer/trainer.h).
#include "launch/trainer/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "core/cpu/gemm.h"
#include "optim/aux_free_balancing.h"
#include "core/random.h"
#include "core/timer.h"
#include "data/data_loader.h"
#include "launch/trainer/telemetry.h"
#include "launch/trainer/train_checkpoint.h"
#include "launch/trainer/watchdog.h"
#include "optim/adamw.h"
#include "optim/grad_norm.h"
#include "optim/lr_schedule.h"
#include "optim/sgd.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/grad_sync.h"
#include "parallel/local_rank.h"
#include "parallel/process_groups.h"

namespace moe {

namespace {
std::atomic<bool> g_stop_requested{false};
}  // namespace

void request_stop() { g_stop_requested.store(true); }

TransformerConfig transformer_config(const TrainConfig& c) {
  TransformerConfig t;
  t.vocab_size = c.model.vocab_size;
  t.d_model = c.model.d_model;
  t.n_layers = c.model.n_layers;
  t.n_heads = c.model.n_heads;
  t.seq_len = c.model.seq_len;
  t.norm = c.model.norm;
  t.positions = c.model.positions;
  t.tie_embeddings = c.model.tie_embeddings;
  t.moe_every = c.model.moe_every;
  t.dense_hidden = c.model.dense_hidden;
  t.dense_activation = c.model.dense_activation;
  t.init_std = static_cast<float>(c.model.init_std);
  t.moe = c.moe_layer_config();
  t.shared_experts = c.moe.shared_experts;
  t.shared_expert_hidden = c.moe.shared_expert_hidden;
  return t;
}

namespace {

// Test hooks, read from the environment, for the fault tests (tests/train_e2e.sh, tests/checkpoint_e2e.sh):
//   MOE_TEST_NAN_STEPS=a:b   rank 0 writes NaN into a gradient at steps a..b (1-based, inclusive)
//   MOE_TEST_STALL=r:s       rank r stops in the gradient sync phase of step s
//   MOE_TEST_KILL_IN_SAVE=r:s  rank r kills itself halfway through writing its checkpoint shard of step s
//                            (read in core/checkpoint/checkpoint.cpp; tests/checkpoint_e2e.sh)
struct FaultInjection {
  int64_t nan_first = -1, nan_last = -1;
  int stall_rank = -1;
  int64_t stall_step = -1;

  bool nan_at(int64_t step) const { return step >= nan_first && step <= nan_last; }

  static FaultInjection from_environment() {
    FaultInjection f;
    if (const char* v = std::getenv("MOE_TEST_NAN_STEPS")) {
      long long a = -1, b = -1;
      if (std::sscanf(v, "%lld:%lld", &a, &b) == 2) {
        f.nan_first = a;
        f.nan_last = b;
      }
    }
    if (const char* v = std::getenv("MOE_TEST_STALL")) {
      long long r = -1, s = -1;
      if (std::sscanf(v, "%lld:%lld", &r, &s) == 2) {
        f.stall_rank = static_cast<int>(r);
        f.stall_step = s;
      }
    }
    return f;
  }
};

struct DataSources {
  std::unique_ptr<SequenceSource> train;
  std::unique_ptr<SequenceSource> eval_file;  // null: evaluation uses the held-out split of train
  IndexRange train_range, eval_range;
  const SequenceSource& eval() const { return eval_file ? *eval_file : *train; }
};

std::unique_ptr<SequenceSource> open_token_source(const std::string& path, const TrainConfig& cfg) {
  auto src = std::make_unique<TokenFileSource>(path, cfg.model.seq_len);
  MOE_REQUIRE(src->vocab_size() <= cfg.model.vocab_size, "data file '", path, "' has vocab_size ", src->vocab_size(),
              " but model.vocab_size = ", cfg.model.vocab_size, "; set model.vocab_size >= ", src->vocab_size());
  return src;
}

DataSources open_data(const TrainConfig& cfg, int world_size, bool eval_only) {
  DataSources d;
  if (cfg.data.source == DataSource::Synthetic) {
    SyntheticCorpusConfig corpus;
    corpus.vocab_size = cfg.model.vocab_size;
    corpus.num_domains = cfg.data.synthetic_domains;
    corpus.branching = cfg.data.synthetic_branching;
    corpus.seed = static_cast<uint64_t>(cfg.run.seed);
    d.train = std::make_unique<SyntheticSource>(corpus, cfg.data.synthetic_sequences, cfg.model.seq_len);
  } else {
    d.train = open_token_source(cfg.data.train_path, cfg);
  }
  if (!cfg.data.eval_path.empty()) {
    d.eval_file = open_token_source(cfg.data.eval_path, cfg);
    d.train_range = {0, d.train->num_sequences()};
    d.eval_range = {0, d.eval_file->num_sequences()};
  } else {
    DataSplit split = make_split(*d.train, cfg.data.eval_fraction);
    d.train_range = split.train;
    d.eval_range = split.eval;
  }
  MOE_REQUIRE((cfg.run.eval_every == 0 && !eval_only) || d.eval_range.size() >= world_size, "the held-out split has ",
              d.eval_range.size(), " sequences, fewer than the ", world_size,
              " ranks; raise data.eval_fraction or give data.eval_path");
  return d;
}

std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& cfg, ParameterRegistry& registry) {
  if (cfg.optim.name == OptimizerKind::SGD) {
    SgdConfig s;
    s.momentum = static_cast<float>(cfg.optim.momentum);
    s.weight_decay = static_cast<float>(cfg.optim.weight_decay);
    return std::make_unique<Sgd>(registry, s);
  }
  AdamWConfig a;
  a.beta1 = static_cast<float>(cfg.optim.beta1);
  a.beta2 = static_cast<float>(cfg.optim.beta2);
  a.eps = static_cast<float>(cfg.optim.eps);
  a.weight_decay = static_cast<float>(cfg.optim.weight_decay);
  return std::make_unique<AdamW>(registry, a);
}

// Routing counts of the MoE layers: this rank's, since the last log line, this step and over the
// whole run.
struct RoutingCounts {
  int64_t num_experts = 0, num_domains = 0;
  std::vector<std::vector<int64_t>> routed;       // [layer][expert] before dropping, since the last log line
  std::vector<std::vector<int64_t>> kept;         // [layer][expert] after dropping, since the last log line
  std::vector<std::vector<int64_t>> kept_total;   // [layer][expert] after dropping, whole run
  std::vector<std::vector<int64_t>> domain;       // [layer][domain * E + expert] kept, whole run
  std::vector<std::vector<int64_t>> step_routed;  // [layer][expert] this optimizer step (aux-free balancing)

  RoutingCounts(int64_t layers, int64_t experts, int64_t domains)
      : num_experts(experts), num_domains(domains), routed(layers, std::vector<int64_t>(experts, 0)), kept(routed),
        kept_total(routed), domain(layers, std::vector<int64_t>(std::max<int64_t>(domains, 0) * experts, 0)),
        step_routed(routed) {}

  // The counts a checkpoint keeps, as one flat list, and back (false: another layout).
  std::vector<int64_t> to_counters() const {
    std::vector<int64_t> out;
    for (const auto* table : {&routed, &kept, &kept_total, &domain})
      for (const auto& row : *table) out.insert(out.end(), row.begin(), row.end());
    return out;
  }
  bool from_counters(const std::vector<int64_t>& in) {
    if (in.size() != to_counters().size()) return false;
    size_t at = 0;
    for (auto* table : {&routed, &kept, &kept_total, &domain})
      for (auto& row : *table)
        for (int64_t& c : row) c = in[at++];
    return true;
  }

  // Adds the last forward of every layer; entropy[l] += the mean over its tokens of the entropy of
  // layer l's router probabilities.
  void add(const std::vector<MoELayer*>& layers, const std::vector<int64_t>& seq_domain, int64_t seq_len,
           std::vector<double>& entropy) {
    for (size_t l = 0; l < layers.size(); ++l) {
      const MoEStats& st = layers[l]->stats();
      for (int64_t e = 0; e < num_experts; ++e) {
        routed[l][e] += st.routed[e];
        step_routed[l][e] += st.routed[e];
        kept[l][e] += st.kept[e];
        kept_total[l][e] += st.kept[e];
      }
      entropy[l] += mean_entropy(layers[l]->router_output().probs);
      if (num_domains <= 0) continue;
      const int32_t* expert = layers[l]->router_output().expert.i32();
      const int32_t* slot = layers[l]->plan().slot.i32();
      const int64_t k = layers[l]->config().top_k;
      for (int64_t i = 0; i < st.tokens * k; ++i) {
        const int64_t dom = seq_domain[(i / k) / seq_len];
        if (slot[i] >= 0 && dom >= 0 && dom < num_domains) ++domain[l][dom * num_experts + expert[i]];
      }
    }
  }

  // probs (T, E): mean over rows of -sum p log p.
  static double mean_entropy(const Tensor& probs) {
    const int64_t T = probs.dim(0), E = probs.dim(1);
    if (T == 0) return 0.0;
    const float* p = probs.f32();
    double sum = 0;
    for (int64_t i = 0; i < T * E; ++i)
      if (p[i] > 0) sum -= static_cast<double>(p[i]) * std::log(static_cast<double>(p[i]));
    return sum / static_cast<double>(T);
  }
};

// Sums since the last log line that every rank holds alike (from the per-step all-reduce): kept in
// checkpoints, so a resumed run logs exactly what an uninterrupted one would.
struct IntervalSums {
  int64_t steps = 0;
  double loss = 0, aux = 0, z = 0;
  std::vector<double> entropy;  // [MoE layer] per-step mean router entropy

  explicit IntervalSums(size_t layers) : entropy(layers, 0.0) {}
  void clear() { *this = IntervalSums(entropy.size()); }
  std::vector<double> to_sums() const {
    std::vector<double> out = {loss, aux, z};
    out.insert(out.end(), entropy.begin(), entropy.end());
    return out;
  }
  // False (left cleared) when the checkpoint's sums have another layout.
  bool from_state(const std::vector<double>& sums, const std::vector<int64_t>& counters) {
    clear();
    if (sums.size() != 3 + entropy.size() || counters.size() != 1) return false;
    loss = sums[0];
    aux = sums[1];
    z = sums[2];
    std::copy(sums.begin() + 3, sums.end(), entropy.begin());
    steps = counters[0];
    return true;
  }
};

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  MOE_REQUIRE(f.good(), "cannot write '", path, "'");
  f << text;
}

// Collective. If any rank's `error` is non-empty, throws InvalidArgument on every rank with the lowest
// such rank's message: a failure only some ranks see (a damaged tensor that only they read) then ends
// every rank alike, with the message where rank 0 prints it, instead of leaving the others waiting.
void throw_if_any_rank_failed(Communicator& world, const std::string& error) {
  const int first = all_reduce_value(world, error.empty() ? world.size() : world.rank(), ReduceOp::Min);
  if (first == world.size()) return;
  int64_t length = world.rank() == first ? static_cast<int64_t>(error.size()) : 0;
  world.broadcast(&length, sizeof length, first);
  std::string message(static_cast<size_t>(length), '\0');
  if (world.rank() == first) message = error;
  world.broadcast(message.data(), length, first);
  throw InvalidArgument(message);
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

// Keeps the lines of metrics.jsonl up to `step`: a resumed run rewrites what follows.
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    long long s = -1;
    if (std::sscanf(line.c_str(), "{\"step\": %lld", &s) == 1 && s <= step) kept += line + "\n";
  }
  in.close();
  write_text_file(path, kept);
}

std::vector<int64_t> flatten(const std::vector<std::vector<int64_t>>& v) {
  std::vector<int64_t> out;
  for (const auto& row : v) out.insert(out.end(), row.begin(), row.end());
  return out;
}

std::string routing_report(const RoutingCounts& counts, const std::vector<int64_t>& moe_layer_ids) {
  std::ostringstream os;
  const int64_t E = counts.num_experts;
  char buf[64];
  for (size_t l = 0; l < counts.kept_total.size(); ++l) {
    int64_t total = 0;
    for (int64_t c : counts.kept_total[l]) total += c;
    os << "layer " << moe_layer_ids[l] << " (MoE): share of kept tokens per expert\n  ";
    for (int64_t e = 0; e < E; ++e) {
      std::snprintf(buf, sizeof buf, " exp%-3lld", (long long)e);
      os << buf;
    }
    os << "\n  ";
    for (int64_t e = 0; e < E; ++e) {
      std::snprintf(buf, sizeof buf, " %5.1f%%", total ? 100.0 * counts.kept_total[l][e] / total : 0.0);
      os << buf;
    }
    os << "\n";
    if (counts.num_domains <= 0) continue;
    os << "  by domain of the synthetic corpus (each row: that domain's tokens over experts)\n";
    for (int64_t dom = 0; dom < counts.num_domains; ++dom) {
      int64_t row = 0;
      for (int64_t e = 0; e < E; ++e) row += counts.domain[l][dom * E + e];
      std::snprintf(buf, sizeof buf, "  domain %-3lld", (long long)dom);
      os << buf;
      for (int64_t e = 0; e < E; ++e) {
        std::snprintf(buf, sizeof buf, " %5.1f%%", row ? 100.0 * counts.domain[l][dom * E + e] / row : 0.0);
        os << buf;
      }
      os << "\n";
    }
  }
  return os.str();
}

// Sums the per-rank [layer][expert] counts over all ranks.
void all_reduce_usage(Communicator& world, std::vector<std::vector<int64_t>>& usage) {
  std::vector<int64_t> flat = flatten(usage);
  all_reduce(world, flat.data(), static_cast<int64_t>(flat.size()));
  size_t at = 0;
  for (auto& row : usage)
    for (int64_t& c : row) c = flat[at++];
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
  if (cfg.moe.balancing == Balancing::AuxFree)
    std::snprintf(buf, sizeof buf,
                  "load balancing: aux_free, per-expert routing biases moved by %g per optimizer step; %s",
                  cfg.moe.bias_update_rate,
                  coeff > 0 ? ("plus the load-balancing loss with moe.aux_loss_coeff = " + std::to_string(coeff)).c_str()
                            : "no load-balancing loss (moe.aux_loss_coeff = 0, aux_free's default)");
  else
    std::snprintf(buf, sizeof buf, "load balancing: aux_loss, the load-balancing loss with moe.aux_loss_coeff = %g%s",
                  coeff, coeff > 0 ? "" : " (off)");
  return buf;
}

// Where a run starts: the checkpoint to load ("" for a fresh start).
std::string checkpoint_to_load(const TrainConfig& cfg, RunMode mode, bool leader) {
  std::string dir;
  if (cfg.checkpoint.resume == ResumeMode::Auto || mode == RunMode::EvalOnly) {
    for (const CheckpointListing& c : list_checkpoints(cfg.checkpoint.dir)) {
      if (c.complete) dir = c.dir;
      else if (leader) std::printf("ignoring incomplete checkpoint %s (%s)\n", c.dir.c_str(), c.problem.c_str());
    }
  }
  if (dir.empty()) dir = cfg.checkpoint.init_from;
  MOE_REQUIRE(mode != RunMode::EvalOnly || !dir.empty(), "--eval-only needs a checkpoint: checkpoint.dir '",
              cfg.checkpoint.dir, "' holds no complete one and checkpoint.init_from is empty");
  return dir;
}

}  // namespace

TrainResult run_training(const TrainConfig& cfg, Communicator& world, void (*on_watchdog)(const std::string& message),
                         RunMode mode) {
  const int rank = world.rank(), W = world.size();
  const bool leader = rank == 0;
  const bool eval_only = mode == RunMode::EvalOnly;
  set_num_threads(static_cast<int>(cfg.run.threads_per_rank));
  flush_denormals_to_zero();  // before the first OpenMP region creates the worker threads
  const FaultInjection faults = FaultInjection::from_environment();

  // Everything that can fail on bad input (data files, a missing checkpoint) happens before the
  // first collective, on every rank alike, so a bad input ends every rank with the same message.
  DataSources data = open_data(cfg, W, eval_only);
  // A fresh run would fail at its first save on a step that already exists: say so now.
  if (!eval_only && cfg.checkpoint.resume == ResumeMode::Never && cfg.checkpoint.every > 0) {
    const std::string existing = newest_complete_checkpoint(cfg.checkpoint.dir);
    MOE_REQUIRE(existing.empty(), "checkpoint.dir '", cfg.checkpoint.dir, "' already holds checkpoints (newest: ",
                existing, "); set checkpoint.resume=auto to continue from it, or choose another run.dir or "
                "checkpoint.dir for a fresh run");
  }
  const std::string resume_from = checkpoint_to_load(cfg, mode, leader);
  const int64_t B = cfg.data.batch_size, S = cfg.model.seq_len, N = B * S;
  const int64_t A = cfg.optim.grad_accum_steps;
  DataLoader loader(*data.train, data.train_range.begin, data.train_range.end, rank, W, B,
                    static_cast<uint64_t>(cfg.run.seed));

  // Where this rank sits. A CUDA build selects its GPU here, before any device memory exists:
  // gpu_for_local_rank(placement.local_rank, <the node's GPU count>). This build has no CUDA path,
  // so there is no GPU to pick: with 0 GPUs the answer is -1, the CPU.
  const LocalPlacement placement = local_placement(world);
  const int gpu = gpu_for_local_rank(placement.local_rank, /*gpu_count=*/0);

  ProcessGroups groups = make_process_groups(world, resolved_ep(cfg, W), cfg.moe.num_experts);
  TransformerLM model(transformer_config(cfg), static_cast<uint64_t>(cfg.run.seed),
                      [&groups] { return make_all_to_all_exchange(groups); });
  ParameterRegistry registry;
  model.register_parameters(registry);
  if (cfg.optim.decay_norms_and_biases)
    for (Parameter& p : registry.all()) p.weight_decay = true;
  std::unique_ptr<Optimizer> optimizer = make_optimizer(cfg, registry);
  GradientSync grad_sync;
  LrSchedule schedule{cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps, cfg.run.steps, cfg.optim.schedule};
  std::vector<MoELayer*> moe_layers = model.moe_layers();
  std::vector<int64_t> moe_layer_ids;
  for (int64_t i = 0; i < cfg.model.n_layers; ++i)
    if (model.moe_layer(i) != nullptr) moe_layer_ids.push_back(i);
  const size_t L = moe_layers.size();

  if (leader) {
    std::printf("moe-train: %d rank(s), ep = %d, %lld experts (%lld per rank), %lld parameters (%lld active per "
                "token)%s\n",
                W, groups.layout.ep, (long long)cfg.moe.num_experts, (long long)groups.layout.experts_per_rank,
                (long long)model.total_params(), (long long)model.active_params_per_token(),
                eval_only ? "; evaluation only" : "");
    std::printf("rank 0: local rank %d of %d on node %d (from %s); %s\n", placement.local_rank,
                placement.local_size, placement.node, placement.source.c_str(),
                gpu < 0 ? "CPU (this build has no GPU path)" : ("GPU " + std::to_string(gpu)).c_str());
    std::printf("resolved config:\n%s", to_yaml(cfg).c_str());
    std::printf("%s\n", balancing_summary(cfg).c_str());
    std::printf("training data: %lld sequences of %lld tokens (held out: %lld); unigram entropy %.3f nats/token%s\n",
                (long long)data.train_range.size(), (long long)S, (long long)data.eval_range.size(),
                unigram_entropy(*data.train, data.train_range),
                cfg.data.source == DataSource::Synthetic
                    ? (", best achievable loss " + std::to_string(static_cast<const SyntheticSource&>(*data.train)
                                                                       .corpus()
                                                                       .entropy_rate()) + " nats/token").c_str()
                    : "");
    if (A > 1)
      std::printf("gradient accumulation: %lld micro-batches of %lld sequences per rank per optimizer step\n",
                  (long long)A, (long long)B);
    std::fflush(stdout);
  }

  const int64_t num_domains = cfg.data.source == DataSource::Synthetic ? cfg.data.synthetic_domains : 0;
  RoutingCounts routing(static_cast<int64_t>(L), cfg.moe.num_experts, num_domains);
  IntervalSums interval(L);
  std::vector<int32_t> inputs_v(N), targets_v(N);
  std::vector<int64_t> domains(B);
  Tensor inputs = Tensor::empty({N}, DType::I32), targets = Tensor::empty({N}, DType::I32);

  auto evaluate = [&]() -> double {
    // Rank r evaluates its contiguous share of the held-out split, in fixed batches; every rank runs
    // the same number of batches because the MoE exchange is collective.
    const int64_t per_rank = data.eval_range.size() / W;
    const int64_t eval_b = std::min(B, per_rank);
    const int64_t batches = std::min(cfg.run.eval_batches, per_rank / eval_b);
    const IndexRange mine = rank_shard(data.eval_range, rank, W);
    const int64_t n = eval_b * S;
    std::vector<int32_t> seq(S + 1), in(n), tg(n);
    double sum = 0;
    for (int64_t b = 0; b < batches; ++b) {
      for (int64_t i = 0; i < eval_b; ++i) {
        data.eval().sequence(mine.begin + b * eval_b + i, seq.data());
        std::copy(seq.begin(), seq.end() - 1, in.begin() + i * S);
        std::copy(seq.begin() + 1, seq.end(), tg.begin() + i * S);
      }
      Tensor ti = Tensor::from_ints({n}, in), tt = Tensor::from_ints({n}, tg);
      sum += model.forward(ti, tt, /*training=*/false);
    }
    return all_reduce_value(world, sum) / static_cast<double>(W * batches);
  };

  TrainResult result;
  int64_t consecutive_nonfinite = 0;
  int64_t first_step = 1;
  std::string run_id;
  if (!resume_from.empty()) {
    LoopState loop;
    std::string error;
    try {
      run_id = load_training_checkpoint(resume_from, cfg, model, registry, *optimizer, groups,
                                        loader.steps_per_epoch(), &loop);
      loader.restore(loop.loader);
    } catch (const InvalidArgument& e) {
      error = e.what();
    }
    throw_if_any_rank_failed(world, error);
    first_step = loop.step + 1;
    result.steps_done = loop.step;
    result.skipped_steps = loop.skipped_steps;
    consecutive_nonfinite = loop.consecutive_nonfinite;
    interval.from_state(loop.shared_sums, loop.shared_counters);
    if (!routing.from_counters(loop.rank_counters)) {
      // Another world size: the per-rank counts since the last log line cannot be split anew; the
      // whole-run expert usage is kept as recorded.
      for (size_t l = 0; l < routing.kept_total.size() && l < loop.expert_usage.size(); ++l)
        if (world.rank() == 0) routing.kept_total[l] = loop.expert_usage[l];
    }
    if (leader) std::printf("%s %s at step %lld\n", eval_only ? "loaded" : "resumed from", resume_from.c_str(),
                            (long long)loop.step);
  } else {
    run_id = new_run_id(world);
  }

  if (eval_only) {
    result.final_eval_loss = evaluate();
    if (leader) {
      std::printf("%s\n", eval_line(result.steps_done, cfg.run.steps, result.final_eval_loss).c_str());
      std::filesystem::create_directories(cfg.run.dir);
      MetricsLog(cfg.run.dir + "/metrics.jsonl").write_eval(result.steps_done, result.final_eval_loss);
    }
    return result;
  }
  if (first_step > cfg.run.steps) {
    if (leader)
      std::printf("nothing to train: %s is at step %lld and run.steps = %lld (raise run.steps to train on, or "
                  "evaluate it with --eval-only)\n",
                  resume_from.c_str(), (long long)result.steps_done, (long long)cfg.run.steps);
    return result;
  }

  std::unique_ptr<MetricsLog> metrics;
  std::unique_ptr<TensorBoardWriter> tensorboard;
  if (leader) {
    std::filesystem::create_directories(cfg.run.dir);
    std::filesystem::remove(cfg.run.dir + "/DONE");  // written again when this run completes
    write_text_file(cfg.run.dir + "/config.yaml", to_yaml(cfg));
    tensorboard = std::make_unique<TensorBoardWriter>(cfg.run.dir + "/tensorboard");
    truncate_metrics(cfg.run.dir + "/metrics.jsonl", first_step - 1);
    metrics = std::make_unique<MetricsLog>(cfg.run.dir + "/metrics.jsonl");
  }

  // The peak MFU is measured against (every rank at once, as they will share the machine).
  const PeakFlops peak = measure_peak_flops(world, cfg.run.peak_gflops);
  const double flops_per_token = model.flops_per_token();
  if (leader) {
    std::printf("MFU peak %.1f GFLOP/s over all ranks: %s\n", peak.total_gflops, peak.how.c_str());
    std::fflush(stdout);
  }

  // The checkpoint of the state after `step` steps.
  auto save = [&](int64_t step) {
    LoopState loop;
    loop.step = step;
    loop.loader = loader.position();
    loop.skipped_steps = result.skipped_steps;
    loop.consecutive_nonfinite = consecutive_nonfinite;
    loop.shared_sums = interval.to_sums();
    loop.shared_counters = {interval.steps};
    loop.rank_counters = routing.to_counters();
    loop.expert_usage = routing.kept_total;
    all_reduce_usage(world, loop.expert_usage);
    const std::string dir =
        save_training_checkpoint(cfg, run_id, loop, model, registry, *optimizer, groups, world);
    if (leader) std::printf("saved checkpoint %s\n", dir.c_str());
  };

  Watchdog watchdog(cfg.run.watchdog_timeout_s, rank, on_watchdog);
  PhaseTimes time;          // this rank's, summed since the last log line
  int64_t timed_steps = 0;  // steps in `time` (a resumed run's first interval holds fewer than interval.steps)
  double interval_start = now_seconds(), run_start = interval_start;
  const int64_t steps_at_start = first_step - 1;

  // From here on an error may be one rank's alone while the others wait in a collective: it must
  // not look like a setup error that every rank shares (InvalidArgument), so that moe-train
  // aborts the job instead of exiting quietly.
  try {
  for (int64_t step = first_step; step <= cfg.run.steps; ++step) {
    watchdog.begin_step(step);
    registry.zero_grads();
    for (auto& row : routing.step_routed) std::fill(row.begin(), row.end(), 0);
    // This rank's sums over the micro-batches: cross-entropy, aux, z, then each layer's router entropy.
    std::vector<double> sums(4 + L, 0.0);
    std::vector<double> entropy(L, 0.0);
    for (int64_t micro = 0; micro < A; ++micro) {
      watchdog.phase("data");
      LapTimer timer;
      loader.next_batch(inputs_v.data(), targets_v.data(), domains.data());
      std::copy(inputs_v.begin(), inputs_v.end(), inputs.i32());
      std::copy(targets_v.begin(), targets_v.end(), targets.i32());
      timer.lap(&time.data);

      watchdog.phase("forward");
      sums[0] += model.forward(inputs, targets, /*training=*/true);
      sums[1] += model.aux_loss();
      sums[2] += model.z_loss();
      timer.lap(&time.forward);
      watchdog.phase("backward");
      model.backward();
      timer.lap(&time.backward);
      for (MoELayer* layer : moe_layers) {
        time.forward -= layer->stats().forward_time.exchanges();
        time.backward -= layer->stats().backward_time.exchanges();
        time.token_exchange += layer->stats().forward_time.exchanges() + layer->stats().backward_time.exchanges();
      }
      routing.add(moe_layers, domains, S, entropy);
    }

    watchdog.phase("gradient sync");
    LapTimer timer;
    if (step == faults.stall_step && rank == faults.stall_rank) {
      while (true) pause();  // the watchdog ends the job
    }
    if (rank == 0 && faults.nan_at(step))
      registry.all()[0].grad.f32()[0] = std::nanf("");
    grad_sync.sync(registry, groups, A);
    // One all-reduce for the losses, the router entropies and "did any rank get a stop signal",
    // each a mean over micro-batches, then over ranks.
    sums[3] = g_stop_requested.load() ? 1.0 : 0.0;
    std::copy(entropy.begin(), entropy.end(), sums.begin() + 4);
    all_reduce(world, sums.data(), static_cast<int64_t>(sums.size()));
    for (double& v : sums) v /= static_cast<double>(W * A);
    const bool stop = sums[3] > 0;
    timer.lap(&time.grad_sync);

    watchdog.phase("optimizer");
    const double grad_norm = global_grad_norm(registry, &groups);
    const double lr = schedule.at(step - 1);
    if (!std::isfinite(sums[0] + sums[1] + sums[2]) || !std::isfinite(grad_norm)) {
      ++result.skipped_steps;
      ++consecutive_nonfinite;
      if (leader)
        std::printf("step %lld: non-finite loss or gradient (loss %g, grad norm %g): step skipped (%lld in a row, "
                    "limit run.max_nonfinite_steps = %lld)\n",
                    (long long)step, sums[0], grad_norm, (long long)consecutive_nonfinite,
                    (long long)cfg.run.max_nonfinite_steps);
      if (consecutive_nonfinite >= cfg.run.max_nonfinite_steps)
        throw TrainingStopped("stopping at step " + std::to_string(step) + ": " +
                              std::to_string(consecutive_nonfinite) +
                              " consecutive steps had a non-finite loss or gradient (run.max_nonfinite_steps = " +
                              std::to_string(cfg.run.max_nonfinite_steps) + ")");
    } else {
      consecutive_nonfinite = 0;
      clip_gradients(registry, grad_norm, cfg.optim.grad_clip);
      optimizer->step(static_cast<float>(lr));
      if (cfg.moe.balancing == Balancing::AuxFree)
        update_selection_bias(moe_layers, routing.step_routed, world, cfg.moe.bias_update_rate);
    }
    timer.lap(&time.optimizer);
    result.final_loss = sums[0];
    interval.loss += sums[0];
    interval.aux += sums[1];
    interval.z += sums[2];
    for (size_t l = 0; l < L; ++l) interval.entropy[l] += sums[4 + l];
    ++interval.steps;
    ++timed_steps;

    if (step % cfg.run.log_every == 0 || step == cfg.run.steps) {
      watchdog.phase("logging");
      std::vector<int64_t> counts = flatten(routing.routed);
      const std::vector<int64_t> kept = flatten(routing.kept);
      counts.insert(counts.end(), kept.begin(), kept.end());
      all_reduce(world, counts.data(), static_cast<int64_t>(counts.size()));
      all_reduce(world, time.begin(), PhaseTimes::kCount);
      const double elapsed = now_seconds() - interval_start;
      StepMetrics m;
      m.step = step;
      m.total_steps = cfg.run.steps;
      m.loss = interval.loss / interval.steps;
      m.aux_loss = interval.aux / interval.steps;
      m.z_loss = interval.z / interval.steps;
      m.lr = lr;
      m.grad_norm = grad_norm;
      m.tokens_per_s = static_cast<double>(timed_steps * A * N * W) / elapsed;
      m.model_gflops_per_rank = flops_per_token * m.tokens_per_s / W / 1e9;
      m.mfu = flops_per_token * m.tokens_per_s / (peak.total_gflops * 1e9);
      for (int i = 0; i < PhaseTimes::kCount; ++i) m.time.begin()[i] = time.begin()[i] / (W * timed_steps);
      const int64_t E = cfg.moe.num_experts;
      int64_t all_routed = 0, all_kept = 0;
      for (size_t l = 0; l < L; ++l) {
        MoELayerMetrics ml;
        ml.layer = moe_layer_ids[l];
        ml.routed.assign(counts.begin() + l * E, counts.begin() + (l + 1) * E);
        ml.kept.assign(counts.begin() + (L + l) * E, counts.begin() + (L + l + 1) * E);
        ml.router_entropy = interval.entropy[l] / interval.steps;
        for (int64_t e = 0; e < E; ++e) {
          all_routed += ml.routed[e];
          all_kept += ml.kept[e];
        }
        m.load_max_over_mean = std::max(m.load_max_over_mean, ml.load_max_over_mean());
        m.moe_layers.push_back(std::move(ml));
      }
      m.dropped_frac = all_routed ? 1.0 - static_cast<double>(all_kept) / all_routed : 0.0;
      m.skipped_steps = result.skipped_steps;
      m.eta_s = (now_seconds() - run_start) / (step - steps_at_start) * (cfg.run.steps - step);
      if (leader) {
        std::printf("%s\n", progress_line(m).c_str());
        std::fflush(stdout);
        metrics->write(m);
        write_tensorboard(*tensorboard, m);
      }
      for (auto* table : {&routing.routed, &routing.kept})
        for (auto& row : *table) std::fill(row.begin(), row.end(), 0);
      interval.clear();
      time = PhaseTimes{};
      timed_steps = 0;
      interval_start = now_seconds();
    }

    if (cfg.run.eval_every > 0 && (step % cfg.run.eval_every == 0 || step == cfg.run.steps)) {
      watchdog.phase("evaluation");
      result.final_eval_loss = evaluate();
      if (leader) {
        std::printf("%s\n", eval_line(step, cfg.run.steps, result.final_eval_loss).c_str());
        metrics->write_eval(step, result.final_eval_loss);
        write_tensorboard_eval(*tensorboard, step, result.final_eval_loss);
      }
      interval_start = now_seconds();  // evaluation time is not training throughput
    }
    result.steps_done = step;
    const bool periodic = cfg.checkpoint.every > 0 && (step % cfg.checkpoint.every == 0 || step == cfg.run.steps);
    if (periodic || stop) {
      watchdog.phase("checkpoint");
      LapTimer save_timer;
      save(step);
      save_timer.lap(&time.checkpoint);
    }
    watchdog.end_step();
    if (stop) {
      result.stopped_by_signal = true;
      if (leader) std::printf("stopped by a signal after step %lld; the checkpoint above resumes it\n", (long long)step);
      break;
    }
  }
  } catch (const InvalidArgument& e) {
    throw std::runtime_error(std::string("during training: ") + e.what());
  }

  // The routing report: counts of the whole run, summed over ranks.
  std::vector<int64_t> totals = flatten(routing.kept_total);
  std::vector<int64_t> by_domain = flatten(routing.domain);
  totals.insert(totals.end(), by_domain.begin(), by_domain.end());
  all_reduce(world, totals.data(), static_cast<int64_t>(totals.size()));
  size_t at = 0;
  for (auto& row : routing.kept_total)
    for (int64_t& c : row) c = totals[at++];
  for (auto& row : routing.domain)
    for (int64_t& c : row) c = totals[at++];
  if (leader) {
    const std::string report = routing_report(routing, moe_layer_ids);
    std::printf("\nrouting report (whole run, all ranks):\n%s", report.c_str());
    write_text_file(cfg.run.dir + "/routing_report.txt", report);
    // The completion marker job scripts look for (launch/launcher/job_script.h): no requeue after it.
    if (!result.stopped_by_signal)
      write_text_file(cfg.run.dir + "/DONE", "steps " + std::to_string(result.steps_done) + "\n");
    std::printf("done: %lld steps, final loss %.4f%s, run directory %s\n", (long long)result.steps_done,
                result.final_loss,
                result.final_eval_loss >= 0 ? (", eval loss " + std::to_string(result.final_eval_loss)).c_str() : "",
                cfg.run.dir.c_str());
  }
  return result;
}

}  // namespace moe
