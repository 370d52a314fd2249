// Auxiliary-loss-free balancing under MPI: the selection bias moves toward equal load, stays
// identical on every rank, changes only which experts are chosen (not the combine weights' source),
// and evens out a skewed router over repeated steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "optim/aux_free_balancing.h"
#include "core/random.h"
#include "mpi_test_util.h"
#include "test_util.h"
#include "parallel/all_to_all_exchange.h"
#include "parallel/process_groups.h"

namespace moe {
namespace {

MoEConfig skewed_config() {
  MoEConfig c = test::moe_test_config(8, 4, 1, 8, Activation::GELU);
  c.capacity_factor = 0;  // dropless: load is what the router chose
  c.aux_loss_coeff = 0;
  return c;
}

// Varied tokens whose feature 0 is always 1, and a gate that adds 3 to expert 0's logit through that
// feature: expert 0 takes most tokens at first, while the tokens' preferences among the others vary.
void make_skewed(MoELayer& layer, Tensor& x, int rank) {
  fill_normal(x, 1.0f, stream_id(7, "x"), static_cast<uint64_t>(rank) * x.numel());
  for (int64_t t = 0; t < x.dim(0); ++t) x.f32()[t * x.dim(1)] = 1.0f;
  Tensor& g = layer.weights.w_gate;
  fill_normal(g, 0.5f, stream_id(7, "gate"));
  g.f32()[0] += 3.0f;
}

double max_over_mean(const std::vector<int64_t>& load) {
  int64_t total = 0, most = 0;
  for (int64_t c : load) {
    total += c;
    most = std::max(most, c);
  }
  return static_cast<double>(most) * load.size() / total;
}

TEST(AuxFreeBalancing, BiasEvensOutASkewedRouterAndStaysIdenticalOnEveryRank) {
  Communicator& world = test_world();
  ProcessGroups groups = make_process_groups(world, world.size(), 4);
  MoELayer layer(skewed_config(), 3, make_all_to_all_exchange(groups, Stream::host()));
  Tensor x = Tensor::empty({64, 8}), y = Tensor::empty({64, 8});
  make_skewed(layer, x, world.rank());

  auto global_load = [&] {
    std::vector<int64_t> load = layer.stats().routed;
    all_reduce(world, load.data(), static_cast<int64_t>(load.size()));
    return load;
  };
  layer.forward(y, x, true);
  const std::vector<int64_t> before = global_load();
  const double imbalance_before = max_over_mean(before);
  EXPECT_GT(imbalance_before, 2.0) << "the test needs a skewed router to start from";

  // One update: over-loaded experts go down by rate, under-loaded up by rate.
  const double rate = 0.01;
  update_selection_bias({&layer}, {layer.stats().routed}, world, rate);
  const double mean = (64.0 * world.size()) / 4;
  for (int e = 0; e < 4; ++e) {
    const float expected = before[e] > mean ? -rate : (before[e] < mean ? rate : 0.0);
    EXPECT_FLOAT_EQ(layer.selection_bias.f32()[e], expected) << "expert " << e;
  }

  // The sign update makes the biases hover around the balance point, so the load of single steps
  // swings; its average over the later steps is what comes out balanced.
  std::vector<int64_t> late_load(4, 0);
  for (int step = 0; step < 300; ++step) {
    layer.forward(y, x, true);
    if (step >= 200) {
      const std::vector<int64_t> load = global_load();
      for (int e = 0; e < 4; ++e) late_load[e] += load[e];
    }
    update_selection_bias({&layer}, {layer.stats().routed}, world, rate);
  }
  const double imbalance_after = max_over_mean(late_load);
  EXPECT_LT(imbalance_after, 1.15) << "from " << imbalance_before;

  // Identical biases on every rank: the max and min over ranks agree bit for bit.
  std::vector<float> hi(layer.selection_bias.f32(), layer.selection_bias.f32() + 4), lo = hi;
  all_reduce(world, hi.data(), 4, ReduceOp::Max);
  all_reduce(world, lo.data(), 4, ReduceOp::Min);
  EXPECT_EQ(hi, lo);

  // The bias only chooses: the combine weights are the chosen experts' unbiased probabilities
  // (top-1 with renormalisation gives weight 1; without it, the raw probability).
  const RouterOutput& r = layer.router_output();
  for (int64_t t = 0; t < 64; ++t) EXPECT_FLOAT_EQ(r.weight.f32()[t], 1.0f);
}

TEST(AuxFreeBalancing, CombineWeightsAreUnbiasedProbabilities) {
  Communicator& world = test_world();
  ProcessGroups groups = make_process_groups(world, 1, 4);
  MoEConfig c = skewed_config();
  c.renormalize = false;
  MoELayer layer(c, 3, make_all_to_all_exchange(groups, Stream::host()));
  Tensor x = Tensor::empty({16, 8}), y = Tensor::empty({16, 8});
  make_skewed(layer, x, world.rank());
  layer.selection_bias.f32()[3] = 10.f;  // forces expert 3 to be chosen
  layer.forward(y, x, true);
  const RouterOutput& r = layer.router_output();
  for (int64_t t = 0; t < 16; ++t) {
    EXPECT_EQ(r.expert.i32()[t], 3);
    EXPECT_FLOAT_EQ(r.weight.f32()[t], r.probs.f32()[t * 4 + 3]);
  }
}

}  // namespace
}  // namespace moe
