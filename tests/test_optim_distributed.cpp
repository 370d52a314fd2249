// The global gradient norm, clipping and the AdamW update of a whole TransformerLM are the same with
// experts sharded (ep = 2, and 4 at 4 ranks) as with every rank holding every expert (ep = 1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/model/transformer.h"
#include "core/parameters.h"
#include "core/random.h"
#include "core/tensor.h"
#include "optim/adamw.h"
#include "optim/grad_norm.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/process_groups.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"

namespace moe {
namespace {

constexpr uint64_t kSeed = 31337;
constexpr int64_t kExperts = 4;
constexpr int64_t kBatch = 2;  // sequences per rank
constexpr int kSteps = 2;      // step 2 also checks that the moments and the weights stayed equal
constexpr float kLr = 1e-2f;
// Below the unclipped norm of every step (checked: scale < 1), so clipping really happens.
constexpr double kMaxNorm = 0.05;

// The norms are double sums of float32 gradients that were themselves summed in another order
// (expert GEMMs over other row blocks, all-reduces over other groups): ~1e-7 relative each, far
// below this bound; counting the expert gradients twice or not summing them moves the norm by far
// more (the experts hold a sizeable share of the squares, checked below).
constexpr double kNormRtol = 1e-5;
// The two norms of the ep = 1 run (library and this test) sum the same doubles, grouped differently.
constexpr double kSameDataRtol = 1e-12;
// Weights and clipped gradients: float32 computed two ways that differ only in summation order.
// Relative to each element plus a share of the tensor's largest element for those that nearly cancel.
// An AdamW step moves an element by about lr * g / (|g| + eps), so reordering noise in g reaches the
// weights no larger than relative to g. The worst element observed (np 2 and 4) uses under 2% of this.
constexpr double kRtol = 1e-4;
constexpr double kAtol = 1e-5;

TransformerConfig model_config() {
  TransformerConfig c = test::transformer_test_config(16, 8, 2, 2, 6);
  c.tie_embeddings = false;
  c.moe_every = 1;
  c.dense_hidden = 8;
  c.dense_activation = Activation::GELU;
  c.moe = test::moe_test_config(0, kExperts, 2, 8, Activation::GELU);
  // Dropless: every token reaches its experts whatever the layout, so routing cannot depend on it.
  c.moe.capacity_factor = 0.0;
  c.moe.eval_capacity_factor = 0.0;
  // O(1) weights: uneven routing (router logits and expert outputs), and a head large enough that the
  // gradient reaching the experts through the residual stream is not scaled down by it, so the
  // experts hold a sizeable share of the norm.
  c.init_std = 0.5f;
  return c;
}

// Token of global index g in step `step`'s stream; rank r's batch is indices [r * N, (r + 1) * N), and
// its targets are the next token of the same stream.
int32_t token_at(int step, int64_t g) {
  const uint64_t stream = stream_id(kSeed, "tokens.step" + std::to_string(step));
  return static_cast<int32_t>(mix64(stream ^ mix64(static_cast<uint64_t>(g))) % 16);
}

struct StepRecord {
  double norm = 0.0;           // global_grad_norm after sync
  double expected_norm = 0.0;  // ep = 1 only: sqrt of this rank's sum of squares of everything
  double expert_share = 0.0;   // ep = 1 only: the experts' share of the squares
  double scale = 0.0;          // clip_gradients' scale
  double clipped_norm = 0.0;   // global_grad_norm after clipping
};

struct Snapshot {
  std::string name;
  ParamKind kind;
  Tensor value;  // after the last step
  Tensor grad;   // after clipping in step 1
};

struct LayoutRun {
  int ep = 1;
  int64_t first_expert = 0;
  int64_t local_experts = 0;
  std::vector<StepRecord> steps;
  std::vector<Snapshot> params;
};

// kSteps training steps as the trainer takes them. Collective over the world: every rank calls it with
// the same ep.
LayoutRun run_layout(int ep) {
  Communicator& world = test_world();
  const TransformerConfig cfg = model_config();
  const int64_t N = kBatch * cfg.seq_len;
  const ProcessGroups groups = make_process_groups(world, ep, kExperts);
  TransformerLM model(cfg, kSeed, [&] { return make_all_to_all_exchange(groups, Stream::host()); });
  ParameterRegistry registry;
  model.register_parameters(registry);
  registry.flatten_gradients();
  AdamW opt(registry, OptimizerConfig{});  // weight decay 0.1 on the matrices

  LayoutRun run;
  run.ep = ep;
  run.first_expert = groups.layout.first_expert;
  run.local_experts = groups.layout.experts_per_rank;
  for (const Parameter& p : registry.all()) run.params.push_back(Snapshot{p.name, p.kind, Tensor(), Tensor()});

  Tensor inputs = Tensor::empty({N}, DType::I32), targets = Tensor::empty({N}, DType::I32);
  for (int step = 1; step <= kSteps; ++step) {
    const int64_t first = static_cast<int64_t>(world.rank()) * N;
    for (int64_t i = 0; i < N; ++i) {
      inputs.i32()[i] = token_at(step, first + i);
      targets.i32()[i] = token_at(step, first + i + 1);
    }
    registry.zero_grads();
    model.forward(inputs, targets, /*training=*/true);
    model.backward();
    sync_gradients(registry, groups, Stream::host());

    StepRecord rec;
    if (ep == 1) {
      // Every rank holds every parameter: the norm is its own sum of squares, one loop over all.
      long double total = 0.0L, experts = 0.0L;
      for (const Parameter& p : registry.all())
        for (int64_t i = 0; i < p.grad.numel(); ++i) {
          const long double sq = static_cast<long double>(p.grad.f32()[i]) * p.grad.f32()[i];
          total += sq;
          if (p.kind == ParamKind::Expert) experts += sq;
        }
      rec.expected_norm = std::sqrt(static_cast<double>(total));
      rec.expert_share = static_cast<double>(experts / total);
    }
    rec.norm = global_grad_norm(registry, &groups);
    rec.scale = clip_gradients(registry, rec.norm, kMaxNorm);
    rec.clipped_norm = global_grad_norm(registry, &groups);
    if (step == 1)
      for (size_t p = 0; p < registry.all().size(); ++p) run.params[p].grad = registry.all()[p].grad.clone();
    opt.step(kLr);
    run.steps.push_back(rec);
  }
  for (size_t p = 0; p < registry.all().size(); ++p) run.params[p].value = registry.all()[p].value.clone();
  return run;
}

// Passes when |got - want| <= kRtol * |want| + kAtol * max|want| for every element; otherwise names
// the worst element and both values.
::testing::AssertionResult all_close(const std::string& what, const Tensor& got, const Tensor& want) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << to_string(got.shape()) << " vs "
                                         << to_string(want.shape());
  double max_abs = 0.0;
  for (int64_t i = 0; i < want.numel(); ++i) max_abs = std::max(max_abs, std::fabs(static_cast<double>(want.f32()[i])));
  int64_t worst = -1;
  double worst_excess = 0.0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double w = want.f32()[i];
    const double excess = std::fabs(got.f32()[i] - w) - (kRtol * std::fabs(w) + kAtol * max_abs);
    if (!(excess <= 0.0) && (worst < 0 || !(excess <= worst_excess))) {
      worst = i;
      worst_excess = excess;
    }
  }
  if (worst < 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": worst element " << worst << " of " << to_string(want.shape())
                                       << " is " << got.f32()[worst] << ", expected " << want.f32()[worst]
                                       << " (max |expected| " << max_abs << ")";
}

::testing::AssertionResult close_rel(const std::string& what, double got, double want, double rtol) {
  if (std::fabs(got - want) <= rtol * std::fabs(want)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << got << ", expected " << want << " (relative diff "
                                       << std::fabs(got - want) / std::fabs(want) << ", bound " << rtol << ")";
}

// Every rank of the run holds the same value, bit for bit. Collective over the world.
void expect_same_on_every_rank(const std::string& what, double value) {
  Communicator& world = test_world();
  const double hi = all_reduce_value(world, value, ReduceOp::Max);
  const double lo = all_reduce_value(world, value, ReduceOp::Min);
  EXPECT_EQ(hi, lo) << what << " differs between ranks";
}

TEST(OptimDistributed, NormClipAndUpdateIndependentOfExpertParallelSize) {
  const int W = test_world().size();
  std::vector<LayoutRun> runs;
  runs.push_back(run_layout(1));
  for (int ep = 2; ep <= W; ++ep)
    if (W % ep == 0 && kExperts % ep == 0) runs.push_back(run_layout(ep));
  EXPECT_GE(runs.size(), 2u) << "no ep > 1 was run";
  const LayoutRun& ref = runs.front();

  for (const LayoutRun& run : runs)
    for (int s = 0; s < kSteps; ++s) {
      SCOPED_TRACE("ep=" + std::to_string(run.ep) + " step=" + std::to_string(s + 1));
      const StepRecord& rec = run.steps[s];
      expect_same_on_every_rank("norm", rec.norm);
      expect_same_on_every_rank("clip scale", rec.scale);
      expect_same_on_every_rank("clipped norm", rec.clipped_norm);
      EXPECT_LT(rec.scale, 1.0) << "no clipping happened (norm " << rec.norm << " <= max_norm " << kMaxNorm << ")";
      EXPECT_TRUE(close_rel("clip scale", rec.scale, kMaxNorm / rec.norm, 1e-15));  // the same double division
      // After clipping, the norm is max_norm up to the float32 rounding of each gradient (~6e-8).
      EXPECT_TRUE(close_rel("norm after clipping", rec.clipped_norm, kMaxNorm, 1e-6));
      // Every parameter counted once: the norm equals the one computed here from ep = 1's gradients,
      // where every rank holds every parameter.
      EXPECT_TRUE(close_rel("norm vs ep = 1's sum of squares of everything", rec.norm, ref.steps[s].expected_norm,
                            run.ep == 1 ? kSameDataRtol : kNormRtol));
      EXPECT_TRUE(close_rel("norm vs ep = 1's norm", rec.norm, ref.steps[s].norm, kNormRtol));
    }
  // The experts carry enough of the squares that counting them twice, or only this rank's shard,
  // moves the norm far beyond kNormRtol.
  for (int s = 0; s < kSteps; ++s) EXPECT_GT(ref.steps[s].expert_share, 0.01) << "step " << s + 1;

  for (size_t l = 1; l < runs.size(); ++l) {
    const LayoutRun& run = runs[l];
    SCOPED_TRACE("ep=" + std::to_string(run.ep) + " rank=" + std::to_string(test_world().rank()));
    EXPECT_EQ(run.local_experts, kExperts / run.ep);
    EXPECT_EQ(run.params.size(), ref.params.size());
    const std::string after = " after " + std::to_string(kSteps) + " steps";
    for (size_t p = 0; p < std::min(run.params.size(), ref.params.size()); ++p) {
      const Snapshot& got = run.params[p];
      const Snapshot& want = ref.params[p];
      EXPECT_EQ(got.name, want.name);
      EXPECT_EQ(got.kind, want.kind);
      if (got.kind == ParamKind::Dense) {
        EXPECT_TRUE(all_close(got.name + " clipped grad (step 1)", got.grad, want.grad));
        EXPECT_TRUE(all_close(got.name + after, got.value, want.value));
      } else {
        // The shard holds global experts [first_expert, first_expert + E_local) of the full tensor.
        const int64_t lo = run.first_expert, hi = run.first_expert + run.local_experts;
        EXPECT_TRUE(all_close(got.name + " clipped grad (step 1)", got.grad, want.grad.rows(lo, hi)));
        EXPECT_TRUE(all_close(got.name + after, got.value, want.value.rows(lo, hi)));
      }
    }
  }
}

}  // namespace
}  // namespace moe
