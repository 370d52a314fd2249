// Expert parallelism is invisible to the math: ep-sharded MoE layers match ep = 1 on the same ranks and,
// dropless with the global aux-loss scope, one process running the whole batch; edge cases; bad layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/moe/moe_config.h"
#include "core/moe/moe_layer.h"
#include "core/parameters.h"
#include "core/random.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/grad_sync.h"
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

constexpr uint64_t kSeed = 2024;

// Every comparison is float32 computed two ways that differ only in summation order: expert GEMMs over
// other row blocks, weight gradients summed over rows in another order, all-reduces in another order.
// With values O(1) and at most a few hundred terms per sum, each result is off by a few float32 ulps
// of the terms' magnitude (~1e-7 of the tensor's scale), which near-cancelling elements turn into a
// large relative error; the worst element observed uses under 2% of this bound.
constexpr double kRtol = 1e-4;  // relative to each reference element: far above float32 reordering noise
constexpr double kAtol = 1e-5;  // times the tensor's largest |element|: elements that nearly cancel
constexpr double kLossRtol = 1e-5;  // aux/z losses are double sums of float terms: reordering is ~1e-7

// ---------------------------------------------------------------------------------------------
// Deterministic data: every value is a function of (seed, global index), so any rank can compute it.
// ---------------------------------------------------------------------------------------------

// Rank r holds counts[r] tokens with global indices [first(r), first(r) + counts[r]).
struct Batch {
  std::vector<int64_t> counts;
  int64_t first(int r) const {
    int64_t f = 0;
    for (int i = 0; i < r; ++i) f += counts[i];
    return f;
  }
  int64_t total() const { return first(static_cast<int>(counts.size())); }
};

Batch equal_batch(int world, int64_t tokens) { return Batch{std::vector<int64_t>(world, tokens)}; }
// 16, 18, 20, 22 tokens: uneven, so counts and offsets differ between ranks.
Batch uneven_batch(int world) {
  Batch b;
  for (int r = 0; r < world; ++r) b.counts.push_back(16 + 2 * r);
  return b;
}

// The token ids of global tokens first .. first + T - 1, in [0, kVocab): a hash of the global index.
constexpr int64_t kVocab = 40;
Tensor make_token_ids(int64_t first, int64_t T) {
  std::vector<int32_t> ids(T);
  for (int64_t i = 0; i < T; ++i) ids[i] = static_cast<int32_t>(mix64(static_cast<uint64_t>(first + i)) % kVocab);
  return Tensor::from_ints({T}, ids);
}

// x (T, d): feature c of global token g is N(0,1) of counter g * d + c; all-positive (0.1 + |N|) when
// `positive`, which lets a rigged router guarantee its routing.
Tensor make_tokens(int64_t first, int64_t T, int64_t d, bool positive) {
  Tensor x = Tensor::empty({T, d});
  const uint64_t stream = stream_id(kSeed, "tokens");
  for (int64_t i = 0; i < T * d; ++i) {
    const float v = standard_normal(stream, static_cast<uint64_t>(first * d + i));
    x.f32()[i] = positive ? 0.1f + std::fabs(v) : v;
  }
  return x;
}

// dy (T, d) of the main loss (1 / norm) * sum_t <y_t, r_t>: r_t / norm, r_t by global token index.
Tensor make_dy(int64_t first, int64_t T, int64_t norm, int64_t d) {
  Tensor dy = Tensor::empty({T, d});
  const uint64_t stream = stream_id(kSeed, "loss_direction");
  for (int64_t i = 0; i < T * d; ++i)
    dy.f32()[i] = standard_normal(stream, static_cast<uint64_t>(first * d + i)) / static_cast<float>(norm);
  return dy;
}

// How the router weights are set, identically on every rank.
enum class Gate {
  Random,    // N(0, 1): logits of a few units, so routing is uneven and capacity drops tokens
  Dead,      // U(-1, 1) with column kDeadExpert = -10: with positive x it is never in the top-k (k < E)
  AllToZero  // U(-1, 1) with column 0 = +2: with positive x expert 0 has the largest logit, always
};
constexpr int64_t kDeadExpert = 1;  // at ep = 4 with E = 4, rank 1 then receives no rows at all

Tensor make_gate(int64_t d, int64_t E, Gate kind) {
  Tensor w = Tensor::empty({d, E});
  if (kind == Gate::Random) {
    fill_normal(w, 1.0f, stream_id(kSeed, "gate"));
    return w;
  }
  // Other logits are sum_c x_c w_ce with |w_ce| < 1, so they lie in (-sum x, sum x) for positive x.
  fill_uniform(w, -1.0f, 1.0f, stream_id(kSeed, "gate"));
  const int64_t column = kind == Gate::Dead ? kDeadExpert : 0;
  const float value = kind == Gate::Dead ? -10.0f : 2.0f;
  for (int64_t c = 0; c < d; ++c) w.f32()[c * E + column] = value;
  return w;
}

MoEConfig make_config(Activation activation, int64_t E, int64_t top_k, bool renormalize, double capacity_factor,
                      DropPolicy policy, AuxLossScope scope) {
  MoEConfig cfg = moe_test_config(8, E, top_k, 12, activation);
  cfg.renormalize = renormalize;
  cfg.capacity_factor = capacity_factor;
  cfg.eval_capacity_factor = capacity_factor;
  cfg.min_capacity = 1;  // C = ceil(factor * k * T / E) exactly, so a factor of 1 drops under uneven routing
  cfg.drop_policy = policy;
  cfg.aux_loss_scope = scope;
  cfg.jitter_eps = 0.0f;
  // Large loss coefficients make the aux and z gradients a sizeable part of the router and dx
  // gradients, so a wrongly scaled loss gradient shows far above the tolerance.
  cfg.aux_loss_coeff = 0.5f;
  cfg.z_loss_coeff = 0.05f;
  cfg.init_std = 0.5f;  // O(1) expert outputs
  return cfg;
}

std::string describe(const MoEConfig& cfg) {
  std::ostringstream os;
  os << to_string(cfg.activation) << " E=" << cfg.num_experts << " k=" << cfg.top_k
     << " renormalize=" << cfg.renormalize << " capacity_factor=" << cfg.capacity_factor
     << " policy=" << to_string(cfg.drop_policy) << " scope=" << to_string(cfg.aux_loss_scope)
     << " score=" << to_string(cfg.score_function) << " scale=" << cfg.routed_scaling_factor;
  if (cfg.routing_groups != 0)
    os << " routing_groups=" << cfg.routing_groups << " top_groups=" << cfg.top_groups
       << " group_score=" << to_string(cfg.group_score);
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// One forward + backward (+ gradient sync when distributed), and the comparisons.
// ---------------------------------------------------------------------------------------------

struct LayerRun {
  Tensor y, dx;
  MoEStats stats;
  Tensor w_in, w_out;                // this rank's experts' weights
  Tensor g_gate, g_in, g_out;        // gradients, synced when distributed
  int64_t first_expert = 0;
  int64_t local_experts = 0;
};

// Collective over groups' communicators when groups != nullptr (in the same order on every rank).
// token_ids: the ids static routing reads (the learned routings ignore them).
LayerRun run_layer(const MoEConfig& cfg, const ProcessGroups* groups, const Tensor& gate, const Tensor& x,
              const Tensor& dy, const Tensor& token_ids = Tensor()) {
  MoELayer layer(cfg, kSeed, groups != nullptr ? make_all_to_all_exchange(*groups, Stream::host()) : nullptr);
  if (!is_static(cfg.routing))  // static routing has no router
    std::memcpy(layer.weights.w_gate.f32(), gate.f32(), static_cast<size_t>(gate.numel()) * sizeof(float));
  LayerRun run;
  run.y = Tensor::zeros(x.shape());
  layer.forward(run.y, x, /*training=*/true, &token_ids);
  run.dx = Tensor::zeros(x.shape());
  layer.backward(run.dx, dy);
  if (groups != nullptr) {
    ParameterRegistry registry;
    layer.register_parameters(registry, "moe");
    registry.flatten_gradients();  // the gradients so far are copied in
    sync_gradients(registry, *groups, Stream::host());
  }
  run.stats = layer.stats();
  run.w_in = layer.weights.w_in;
  run.w_out = layer.weights.w_out;
  run.g_gate = layer.grads.w_gate;
  run.g_in = layer.grads.w_in;
  run.g_out = layer.grads.w_out;
  run.first_expert = groups != nullptr ? groups->layout.first_expert : 0;
  run.local_experts = layer.weights.w_in.dim(0);
  return run;
}

// Passes when |got - want| <= kRtol * |want| + kAtol * max|want| for every element; otherwise names
// the worst element (by its excess over the bound) and both values.
::testing::AssertionResult all_close(const char* what, const Tensor& got, const Tensor& want) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << to_string(got.shape()) << " vs "
                                         << to_string(want.shape());
  const float* g = got.f32();
  const float* w = want.f32();
  const double max_abs_want = max_abs(want);
  const double atol = kAtol * max_abs_want;
  int64_t worst = -1;
  double worst_excess = 0.0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double diff = std::fabs(static_cast<double>(g[i]) - w[i]);
    const double excess = diff - (kRtol * std::fabs(static_cast<double>(w[i])) + atol);
    if (!(excess <= 0.0) && (worst < 0 || !(excess <= worst_excess))) {
      worst = i;
      worst_excess = excess;
    }
  }
  if (worst < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": worst element " << worst << " of " << to_string(want.shape())
                                       << " is " << g[worst] << ", expected " << w[worst] << " (|diff| "
                                       << std::fabs(static_cast<double>(g[worst]) - w[worst]) << ", max |expected| "
                                       << max_abs_want << ")";
}

::testing::AssertionResult close_scalar(const char* what, double got, double want) {
  const double bound = kLossRtol * std::fabs(want) + 1e-12;
  if (std::fabs(got - want) <= bound) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << got << ", expected " << want << " (|diff| "
                                       << std::fabs(got - want) << ")";
}

// Experts [first, first + n) of a full (E, ...) tensor.
Tensor experts_slice(const Tensor& full, int64_t first, int64_t n) { return full.rows(first, first + n); }

Tensor scaled(const Tensor& t, float factor) {
  Tensor out = t.clone();
  for (int64_t i = 0; i < out.numel(); ++i) out.f32()[i] *= factor;
  return out;
}

// The expert-sharded run `got` equals the ep = 1 run `ref` of the same rank on the same tokens.
void expect_same_as_replicated(const LayerRun& got, const LayerRun& ref) {
  EXPECT_EQ(got.stats.routed, ref.stats.routed);
  EXPECT_EQ(got.stats.kept, ref.stats.kept);
  EXPECT_EQ(got.stats.dropped_total, ref.stats.dropped_total);
  EXPECT_TRUE(close_scalar("aux_loss", got.stats.aux_loss, ref.stats.aux_loss));
  EXPECT_TRUE(close_scalar("z_loss", got.stats.z_loss, ref.stats.z_loss));
  EXPECT_TRUE(all_close("y", got.y, ref.y));
  EXPECT_TRUE(all_close("dx", got.dx, ref.dx));
  EXPECT_EQ(got.g_gate.defined(), ref.g_gate.defined());
  if (ref.g_gate.defined()) {
    EXPECT_TRUE(all_close("grad w_gate", got.g_gate, ref.g_gate));
  }
  const int64_t first = got.first_expert, n = got.local_experts;
  // Expert e's weights depend only on (seed, e): the shard holds exactly the replicated slice.
  EXPECT_TRUE(all_close("w_in", got.w_in, experts_slice(ref.w_in, first, n)));
  EXPECT_TRUE(all_close("w_out", got.w_out, experts_slice(ref.w_out, first, n)));
  EXPECT_TRUE(all_close("grad w_in", got.g_in, experts_slice(ref.g_in, first, n)));
  EXPECT_TRUE(all_close("grad w_out", got.g_out, experts_slice(ref.g_out, first, n)));
}

struct Scenario {
  MoEConfig cfg;
  Batch batch;
  Gate gate = Gate::Random;
  bool positive_x = false;
  bool expect_drops = false;       // the test is vacuous unless some token was dropped somewhere
  bool compare_single = false;     // also equal to one process on the whole batch (dropless, global scope)
};

// Runs the scenario with ep = 1 and with every ep > 1 that divides W and E, on this rank's micro-batch,
// and expects every sharded run (and, if asked, the single-process run) to agree. Collective over the
// world; every rank makes the same calls whatever the comparisons find. Returns the ep = 1 run.
LayerRun expect_sharding_invisible(const Scenario& s) {
  Communicator& world = test_world();
  const int W = world.size(), rank = world.rank();
  const MoEConfig& cfg = s.cfg;
  const int64_t d = cfg.d_model, E = cfg.num_experts, T = s.batch.counts[rank], first = s.batch.first(rank);
  SCOPED_TRACE(describe(cfg) + " tokens on this rank=" + std::to_string(T) + " rank=" + std::to_string(rank) +
               " W=" + std::to_string(W));
  const Tensor x = make_tokens(first, T, d, s.positive_x);
  const Tensor dy = make_dy(first, T, std::max<int64_t>(T, 1), d);
  const Tensor gate = make_gate(d, E, s.gate);
  const Tensor ids = make_token_ids(first, T);

  const ProcessGroups replicated = make_process_groups(world, 1, E);
  const LayerRun ref = run_layer(cfg, &replicated, gate, x, dy, ids);
  const int64_t dropped = all_reduce_value(world, ref.stats.dropped_total);
  if (cfg.capacity_factor <= 0.0) {
    EXPECT_EQ(dropped, 0) << "dropless mode dropped tokens";
  }
  if (s.expect_drops) {
    EXPECT_GT(dropped, 0) << "no token was dropped: the drop case would be vacuous";
  }

  std::vector<LayerRun> runs{ref};
  for (int ep = 2; ep <= W; ++ep) {
    if (W % ep != 0 || E % ep != 0) continue;
    SCOPED_TRACE("ep=" + std::to_string(ep));
    const ProcessGroups groups = make_process_groups(world, ep, E);
    const LayerRun got = run_layer(cfg, &groups, gate, x, dy, ids);
    EXPECT_EQ(got.local_experts, E / ep);
    expect_same_as_replicated(got, ref);
    if (cfg.precision == Precision::BF16) {
      // Each expert product reads the same bfloat16 rows and weights whichever rank runs it (the
      // exchange moves bits, rounding happens before it), and a row's products do not depend on the
      // other rows of its group: y and dx come out bit for bit. The router's weight gradient is
      // float32 over the same rows: bit for bit too. The expert weight gradients sum other row
      // groupings (and all-reduce in another order): equal to float32 reordering, as checked above.
      EXPECT_EQ(floats_of(got.y), floats_of(ref.y)) << "y differs in bf16";
      EXPECT_EQ(floats_of(got.dx), floats_of(ref.dx)) << "dx differs in bf16";
      EXPECT_EQ(floats_of(got.g_gate), floats_of(ref.g_gate)) << "grad w_gate differs in bf16";
    }
    runs.push_back(got);
  }
  EXPECT_GE(runs.size(), 2u) << "no ep > 1 was run";
  if (!s.compare_single) return ref;

  // One process on all W micro-batches concatenated, with the main loss (1/T) sum_t <y_t, r_t> over
  // all T = W * T_r tokens. Distributed, J = (1/W) sum_r L_r with L_r = (1/T_r) sum <y_t, r_t> + aux +
  // z_r: with equal T_r, J equals the single-process loss (aux is the one global value; mean_r z_r is
  // the z-loss over all tokens), so the synced gradients must equal the single-process ones.
  if (!std::all_of(s.batch.counts.begin(), s.batch.counts.end(), [&](int64_t c) { return c == s.batch.counts[0]; })) {
    ADD_FAILURE() << "the single-process equivalence needs equal micro-batches";  // same verdict on every rank
    return ref;
  }
  const int64_t total = s.batch.total();
  const Tensor x_all = make_tokens(0, total, d, s.positive_x);
  const Tensor dy_all = make_dy(0, total, total, d);
  const LayerRun single = run_layer(cfg, nullptr, gate, x_all, dy_all, make_token_ids(0, total));
  for (const LayerRun& run : runs) {
    SCOPED_TRACE("single-process comparison, ep=" + std::to_string(E / run.local_experts));
    EXPECT_TRUE(all_close("y rows", run.y, single.y.rows(first, first + T)));
    EXPECT_TRUE(close_scalar("aux_loss", run.stats.aux_loss, single.stats.aux_loss));
    const double z_mean = all_reduce_value(world, run.stats.z_loss) / W;
    EXPECT_TRUE(close_scalar("mean z_loss", z_mean, single.stats.z_loss));
    // The layer's dx on rank r is dL_r/dx_r, while dJ/dx_r = (1/W) dL_r/dx_r (J averages the W rank
    // losses) and the single-process dx is dJ/dx. Term by term: the main loss's dy is r_t / T_r here
    // and r_t / (W T_r) there; z_r has mean_over T_r here and W T_r there; the global aux gradient
    // enters here with dloss = W. So distributed dx rows = W * single-process dx rows.
    EXPECT_TRUE(all_close("dx rows", run.dx, scaled(single.dx.rows(first, first + T), static_cast<float>(W))));
    EXPECT_TRUE(all_close("grad w_gate", run.g_gate, single.g_gate));
    EXPECT_TRUE(all_close("grad w_in", run.g_in, experts_slice(single.g_in, run.first_expert, run.local_experts)));
    EXPECT_TRUE(
        all_close("grad w_out", run.g_out, experts_slice(single.g_out, run.first_expert, run.local_experts)));
  }
  return ref;
}

// Sum over ranks of this rank's per-expert counts.
std::vector<int64_t> global_counts(const std::vector<int64_t>& local) {
  std::vector<int64_t> v = local;
  all_reduce(test_world(), v.data(), static_cast<int64_t>(v.size()));
  return v;
}

// ---------------------------------------------------------------------------------------------
// The configuration matrix.
// ---------------------------------------------------------------------------------------------

constexpr Activation kActivations[] = {Activation::ReLU, Activation::GELU, Activation::SwiGLU};

TEST(ExpertParallel, ShardingIsInvisibleWithDrops) {
  // Every combination of top_k, renormalize, drop policy and aux scope; activation and E rotate.
  int i = 0;
  for (int64_t k : {1, 2})
    for (bool renormalize : {true, false})
      for (DropPolicy policy : {DropPolicy::Position, DropPolicy::Probs})
        for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global}) {
          Scenario s;
          s.cfg = make_config(kActivations[i % 3], i % 2 == 0 ? 8 : 4, k, renormalize, 1.0, policy, scope);
          s.batch = uneven_batch(test_world().size());
          s.expect_drops = true;
          expect_sharding_invisible(s);
          ++i;
        }
}

TEST(ExpertParallel, ShardingIsInvisibleWithChoiceMajorDrops) {
  // position_by_choice differs from position only for k > 1.
  int i = 0;
  for (bool renormalize : {true, false})
    for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global}) {
      Scenario s;
      s.cfg = make_config(kActivations[i % 3], i % 2 == 0 ? 8 : 4, 2, renormalize, 1.0, DropPolicy::PositionByChoice,
                          scope);
      s.batch = uneven_batch(test_world().size());
      s.expect_drops = true;
      expect_sharding_invisible(s);
      ++i;
    }
}

TEST(ExpertParallel, ShardingIsInvisibleDropless) {
  int i = 0;
  for (int64_t k : {1, 2})
    for (bool renormalize : {true, false})
      for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global}) {
        Scenario s;
        s.cfg = make_config(kActivations[i % 3], i % 2 == 0 ? 4 : 8, k, renormalize, 0.0, DropPolicy::Position,
                            scope);
        s.batch = uneven_batch(test_world().size());
        expect_sharding_invisible(s);
        ++i;
      }
}

TEST(ExpertParallel, DroplessGlobalScopeEqualsOneProcess) {
  int i = 0;
  for (int64_t k : {1, 2})
    for (bool renormalize : {true, false}) {
      Scenario s;
      s.cfg = make_config(kActivations[i % 3], i % 2 == 0 ? 8 : 4, k, renormalize, 0.0, DropPolicy::Probs,
                          AuxLossScope::Global);
      s.batch = equal_batch(test_world().size(), 20);
      s.compare_single = true;
      expect_sharding_invisible(s);
      ++i;
    }
  // And the third activation with the other drop-policy setting (irrelevant when dropless).
  Scenario s;
  s.cfg = make_config(Activation::SwiGLU, 8, 2, true, 0.0, DropPolicy::Position, AuxLossScope::Global);
  s.batch = equal_batch(test_world().size(), 16);
  s.compare_single = true;
  expect_sharding_invisible(s);
}

TEST(ExpertParallel, ShardingIsInvisibleInBf16) {
  int i = 0;
  for (double factor : {1.0, 0.0})
    for (int64_t k : {1, 2}) {
      Scenario s;
      s.cfg = make_config(kActivations[i % 3], i % 2 == 0 ? 8 : 4, k, true, factor, DropPolicy::Position,
                          AuxLossScope::Global);
      s.cfg.precision = Precision::BF16;
      s.batch = uneven_batch(test_world().size());
      s.expect_drops = factor > 0.0;
      expect_sharding_invisible(s);
      ++i;
    }
}

// Sigmoid scores (with a routed scaling factor) in every aux-loss scope, and the sequence scope with
// softmax scores: sequences of 2 tokens, so the uneven micro-batches (16, 18, 20, 22 tokens) hold whole
// sequences.
MoEConfig sigmoid_or_sequence_config(int i, int64_t k, bool renormalize, double factor, ScoreFunction score,
                                     AuxLossScope scope) {
  MoEConfig cfg = make_config(kActivations[i % 3], i % 2 == 0 ? 8 : 4, k, renormalize, factor,
                              i % 2 == 0 ? DropPolicy::Position : DropPolicy::Probs, scope);
  cfg.score_function = score;
  cfg.routed_scaling_factor = score == ScoreFunction::Sigmoid ? 2.5f : 1.0f;
  cfg.seq_len = 2;
  return cfg;
}

TEST(ExpertParallel, ShardingIsInvisibleWithSigmoidScoresAndTheSequenceScope) {
  int i = 0;
  for (double factor : {1.0, 0.0})
    for (int64_t k : {1, 2})
      for (bool renormalize : {true, false}) {
        for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global, AuxLossScope::Sequence}) {
          Scenario s;
          s.cfg = sigmoid_or_sequence_config(i++, k, renormalize, factor, ScoreFunction::Sigmoid, scope);
          s.batch = uneven_batch(test_world().size());
          s.expect_drops = factor > 0.0;
          expect_sharding_invisible(s);
        }
        Scenario s;
        s.cfg = sigmoid_or_sequence_config(i++, k, renormalize, factor, ScoreFunction::Softmax,
                                           AuxLossScope::Sequence);
        s.batch = uneven_batch(test_world().size());
        s.expect_drops = factor > 0.0;
        expect_sharding_invisible(s);
      }
}

TEST(ExpertParallel, DroplessSigmoidGlobalScopeEqualsOneProcess) {
  for (bool renormalize : {true, false}) {
    Scenario s;
    s.cfg = sigmoid_or_sequence_config(renormalize ? 0 : 1, 2, renormalize, 0.0, ScoreFunction::Sigmoid,
                                       AuxLossScope::Global);
    s.batch = equal_batch(test_world().size(), 16);
    s.compare_single = true;
    expect_sharding_invisible(s);
  }
}

// Expert choice: each rank's experts choose among that rank's own tokens (capacity applies per rank,
// as for token choice), so sharding the experts must change nothing. The exchange then moves a
// different mix than token choice: every expert gets exactly C rows from every rank.
TEST(ExpertParallel, ShardingIsInvisibleWithExpertChoice) {
  int i = 0;
  for (double factor : {0.5, 1.0, 4.0})  // 4.0: C = ceil(4 k T / E) > T, so every expert takes every token
    for (int64_t k : {1, 2}) {
      Scenario s;
      s.cfg = make_config(kActivations[i % 3], i % 2 == 0 ? 8 : 4, k, true, factor, DropPolicy::Position,
                          AuxLossScope::Local);
      s.cfg.routing = Routing::ExpertChoice;
      s.cfg.aux_loss_coeff = 0.0f;  // no load-balancing loss; the z-loss stays
      s.cfg.jitter_eps = i % 2 == 0 ? 0.0f : 0.2f;  // the noise depends on the world rank, not the layout
      s.batch = uneven_batch(test_world().size());
      const LayerRun ref = expect_sharding_invisible(s);
      const int64_t T = s.batch.counts[test_world().rank()], E = s.cfg.num_experts;
      const int64_t C = std::min(T, expert_capacity(factor, T, k, E, s.cfg.min_capacity));
      EXPECT_EQ(ref.stats.kept, std::vector<int64_t>(E, C)) << "each expert takes C of this rank's tokens";
      EXPECT_EQ(ref.stats.dropped_total, 0);
      EXPECT_EQ(ref.stats.aux_loss, 0.0);
      ++i;
    }
}

// Static routing: every rank maps its own tokens by their ids, a map that does not depend on the layout
// (hash: a pure function of (seed, id, choice); table: the file's), so sharding the experts changes
// nothing. Capacity 1.0 drops some choices (the map is not balanced per batch); no router, no losses.
TEST(ExpertParallel, ShardingIsInvisibleWithStaticRouting) {
  TempDir dir;
  // Ids 0-9 to experts (0, 1), 10-19 to (2, 3) in E = 4, the rest to (3, 1); E = 8 reads only the first
  // four experts, which leaves experts 4 .. 7 empty on every layout.
  const std::string table = dir.write("table.txt", "0-9: 0 1\n10-19: 2 3\n*: 3 1  # the rest\n");
  int i = 0;
  for (Routing routing : {Routing::Hash, Routing::Table})
    for (double factor : {0.0, 1.0})
      for (int64_t E : {4, 8}) {
        Scenario s;
        s.cfg = make_config(kActivations[i % 3], E, 2, true, factor,
                            i % 2 == 0 ? DropPolicy::Position : DropPolicy::PositionByChoice, AuxLossScope::Local);
        s.cfg.routing = routing;
        s.cfg.routing_table = routing == Routing::Table ? table : "";
        s.cfg.vocab_size = kVocab;
        s.cfg.aux_loss_coeff = 0.0f;
        s.cfg.z_loss_coeff = 0.0f;
        s.batch = uneven_batch(test_world().size());
        s.expect_drops = factor > 0.0;
        const LayerRun ref = expect_sharding_invisible(s);
        EXPECT_FALSE(ref.g_gate.defined()) << "static routing has no router";
        EXPECT_EQ(ref.stats.aux_loss, 0.0);
        EXPECT_EQ(ref.stats.z_loss, 0.0);
        ++i;
      }
}

// Group-limited routing with a number of groups: the groups are of the experts, not of the layout, so
// every ep routes alike. E = 8 as 4 groups of 2 (top 2 by the top-2 sum) or 2 groups of 4 (top 1 by the
// max), k = 3, sigmoid or softmax scores.
MoEConfig group_limited_config(int i, double factor, AuxLossScope scope) {
  MoEConfig cfg = make_config(kActivations[i % 3], 8, 3, i % 2 == 0, factor,
                              i % 2 == 0 ? DropPolicy::Position : DropPolicy::Probs, scope);
  cfg.routing_groups = i % 2 == 0 ? 4 : 2;
  cfg.top_groups = i % 2 == 0 ? 2 : 1;
  cfg.group_score = i % 2 == 0 ? GroupScore::Top2Sum : GroupScore::Max;
  cfg.score_function = i % 4 < 2 ? ScoreFunction::Sigmoid : ScoreFunction::Softmax;
  return cfg;
}

TEST(ExpertParallel, ShardingIsInvisibleWithGroupLimitedRouting) {
  int i = 0;
  for (double factor : {1.0, 0.0})
    for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global})
      for (int variant = 0; variant < 2; ++variant) {
        Scenario s;
        s.cfg = group_limited_config(i++, factor, scope);
        s.batch = uneven_batch(test_world().size());
        s.expect_drops = factor > 0.0;
        expect_sharding_invisible(s);
      }
  for (int variant = 0; variant < 4; ++variant) {  // dropless, global scope: one process on the whole batch
    Scenario s;
    s.cfg = group_limited_config(variant, 0.0, AuxLossScope::Global);
    s.batch = equal_batch(test_world().size(), 16);
    s.compare_single = true;
    expect_sharding_invisible(s);
  }
}

TEST(ExpertParallel, RoutingGroupsEpIsOneGroupPerRankOfTheLayout) {
  // routing_groups = ep routes as routing_groups = the layout's ep, bit for bit, for every ep.
  Communicator& world = test_world();
  const int W = world.size(), rank = world.rank();
  MoEConfig cfg = make_config(Activation::GELU, 8, 2, true, 1.0, DropPolicy::Position, AuxLossScope::Local);
  cfg.routing_groups = MoEConfig::kRoutingGroupsPerRank;
  const Batch batch = uneven_batch(W);
  const Tensor x = make_tokens(batch.first(rank), batch.counts[rank], cfg.d_model, false);
  const Tensor dy = make_dy(batch.first(rank), batch.counts[rank], batch.counts[rank], cfg.d_model);
  const Tensor gate = make_gate(cfg.d_model, cfg.num_experts, Gate::Random);
  for (int ep = 1; ep <= W; ++ep) {
    if (W % ep != 0) continue;
    SCOPED_TRACE("ep=" + std::to_string(ep));
    const ProcessGroups groups = make_process_groups(world, ep, cfg.num_experts);
    MoEConfig numbered = cfg;
    numbered.routing_groups = ep;
    const LayerRun by_rank = run_layer(cfg, &groups, gate, x, dy);
    const LayerRun by_number = run_layer(numbered, &groups, gate, x, dy);
    EXPECT_EQ(floats_of(by_rank.y), floats_of(by_number.y));
    EXPECT_EQ(floats_of(by_rank.g_gate), floats_of(by_number.g_gate));
  }
}

// ---------------------------------------------------------------------------------------------
// Edge cases.
// ---------------------------------------------------------------------------------------------

TEST(ExpertParallel, ExpertThatNoRankRoutesTo) {
  for (double factor : {1.0, 0.0})
    for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global}) {
      Scenario s;
      s.cfg = make_config(Activation::GELU, 4, 2, true, factor, DropPolicy::Position, scope);
      s.batch = uneven_batch(test_world().size());
      s.gate = Gate::Dead;
      s.positive_x = true;
      s.expect_drops = factor > 0.0;
      const LayerRun run = expect_sharding_invisible(s);

      // The rigging worked: no rank routed anything to the dead expert, and it got no gradient.
      EXPECT_EQ(global_counts(run.stats.routed)[kDeadExpert], 0);
      const Tensor zero_in = Tensor::zeros(run.g_in.rows(kDeadExpert, kDeadExpert + 1).shape());
      const Tensor zero_out = Tensor::zeros(run.g_out.rows(kDeadExpert, kDeadExpert + 1).shape());
      EXPECT_TRUE(all_close("dead expert grad w_in", run.g_in.rows(kDeadExpert, kDeadExpert + 1), zero_in));
      EXPECT_TRUE(all_close("dead expert grad w_out", run.g_out.rows(kDeadExpert, kDeadExpert + 1), zero_out));
    }
}

TEST(ExpertParallel, AllTokensToOneExpert) {
  for (double factor : {1.0, 0.0})
    for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global}) {
      Scenario s;
      s.cfg = make_config(Activation::ReLU, 4, 1, true, factor, DropPolicy::Probs, scope);
      s.batch = uneven_batch(test_world().size());
      s.gate = Gate::AllToZero;
      s.positive_x = true;
      s.expect_drops = factor > 0.0;
      const LayerRun run = expect_sharding_invisible(s);

      const int64_t T = s.batch.counts[test_world().rank()];
      EXPECT_EQ(run.stats.routed[0], T) << "every token of this rank picks expert 0";
      EXPECT_EQ(run.stats.kept[0], factor > 0.0 ? (T + 3) / 4 : T);  // C = ceil(1.0 * 1 * T / 4)
    }
}

TEST(ExpertParallel, EmptyLocalBatchOnOneRank) {
  for (double factor : {1.0, 0.0})
    for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Global}) {
      Scenario s;
      s.cfg = make_config(Activation::SwiGLU, 8, 2, false, factor, DropPolicy::Position, scope);
      s.batch = equal_batch(test_world().size(), 18);
      s.batch.counts[1] = 0;  // rank 1 has no tokens; it still holds experts and receives rows
      s.expect_drops = factor > 0.0;
      expect_sharding_invisible(s);
    }
}

TEST(ExpertParallel, TopKEqualsNumExperts) {
  // With k = E every expert sees every token; a factor of 0.5 gives C = T / 2, so half are dropped.
  for (double factor : {0.5, 0.0})
    for (bool renormalize : {true, false}) {
      Scenario s;
      s.cfg = make_config(Activation::GELU, 4, 4, renormalize, factor, DropPolicy::Probs, AuxLossScope::Global);
      s.batch = uneven_batch(test_world().size());
      s.expect_drops = factor > 0.0;
      expect_sharding_invisible(s);
    }
}

// ---------------------------------------------------------------------------------------------
// Each group's control and data communicators: the same ranks in the same order, but separate MPI
// communicators (congruent, not identical), so control traffic never interleaves with data.
// ---------------------------------------------------------------------------------------------

TEST(ProcessGroups, ControlAndDataAreSeparateCommunicatorsOfTheSameRanks) {
  Communicator& world = test_world();
  for (int ep = 1; ep <= world.size(); ++ep) {
    if (world.size() % ep != 0) continue;
    SCOPED_TRACE("ep=" + std::to_string(ep));
    const ProcessGroups groups = make_process_groups(world, ep, 4 * ep);
    EXPECT_EQ(groups.world.control, &world);
    const std::pair<const ProcessGroup*, int> sizes[] = {
        {&groups.world, world.size()}, {&groups.expert_parallel, ep}, {&groups.expert_data_parallel, world.size() / ep}};
    for (const auto& [group, size] : sizes) {
      ASSERT_NE(group->control, group->data);
      EXPECT_EQ(group->control->size(), size);
      EXPECT_EQ(group->data->size(), size);
      EXPECT_EQ(group->data->rank(), group->control->rank());
      const auto* control = dynamic_cast<const MpiCommunicator*>(group->control);
      const auto* data = dynamic_cast<const MpiCommunicator*>(group->data);
      ASSERT_TRUE(control != nullptr && data != nullptr);
      int verdict = MPI_UNEQUAL;
      MPI_CHECK(MPI_Comm_compare(control->handle(), data->handle(), &verdict));
      EXPECT_EQ(verdict, MPI_CONGRUENT) << "same ranks in the same order, another communication context";
    }
    EXPECT_EQ(groups.expert_parallel.data->rank(), groups.layout.ep_rank);
    // A data all-reduce in flight while the control communicator reduces something else.
    Tensor ones = Tensor::from({3}, {1.f, 1.f, 1.f});
    std::unique_ptr<CommRequest> pending = start_all_reduce(*groups.expert_parallel.data, ones, Stream::host());
    EXPECT_EQ(all_reduce_value(*groups.expert_parallel.control, 2), 2 * ep);
    pending->wait();
    EXPECT_EQ(ones.f32()[2], float(ep));
  }
}

// ---------------------------------------------------------------------------------------------
// Bad layouts: every rank throws the same InvalidArgument before any collective, and stays in step.
// ---------------------------------------------------------------------------------------------

void expect_bad_layout(int ep, int64_t num_experts, const std::vector<std::string>& substrings) {
  Communicator& world = test_world();
  SCOPED_TRACE("ep=" + std::to_string(ep) + " num_experts=" + std::to_string(num_experts));
  const std::string message = error_message([&] { make_process_groups(world, ep, num_experts); });
  EXPECT_TRUE(contains_all(message, substrings));
  // All ranks are still in step: this all-reduce completes and counts every rank.
  EXPECT_EQ(all_reduce_value(world, 1), world.size());
}

TEST(ExpertParallel, BadLayoutsThrowOnEveryRank) {
  const std::string W = std::to_string(test_world().size());
  expect_bad_layout(3, 6, {"ep = 3", "world size = " + W});
  expect_bad_layout(0, 4, {"ep = 0", ">= 1"});
  if (test_world().size() % 4 == 0) {
    expect_bad_layout(4, 6, {"num_experts = 6", "ep = 4"});
  } else {
    expect_bad_layout(4, 6, {"ep = 4", "world size = " + W});
  }
  expect_bad_layout(2, 3, {"num_experts = 3", "ep = 2"});
}

}  // namespace
}  // namespace moe
