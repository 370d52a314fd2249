// Static routing (core/moe/static_routing.h): the hash map against a reference written here, the routing
// table's format and every refused file, and the MoE layer routing by token id (no router, no losses)
// against a plain-loop reference.
#include "core/moe/static_routing.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/moe/moe_layer.h"
#include "core/parameters.h"
#include "core/random.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

constexpr uint64_t kSeed = 77;

// docs/routing.md's definition, written out: choice j of token v swaps position j of the experts'
// list with position j + u mod (E - j), u = mix64(stream_id(seed, "hash_routing") ^ mix64(v E + j)).
std::vector<int32_t> reference_hash(uint64_t seed, int64_t V, int64_t E, int64_t k) {
  std::vector<int32_t> out;
  for (int64_t v = 0; v < V; ++v) {
    std::vector<int32_t> list;
    for (int64_t e = 0; e < E; ++e) list.push_back(static_cast<int32_t>(e));
    for (int64_t j = 0; j < k; ++j) {
      const uint64_t u = mix64(stream_id(seed, "hash_routing") ^ mix64(static_cast<uint64_t>(v * E + j)));
      const int64_t pick = j + static_cast<int64_t>(u % static_cast<uint64_t>(E - j));
      const int32_t chosen = list[pick];
      list[pick] = list[j];
      list[j] = chosen;
      out.push_back(chosen);
    }
  }
  return out;
}

TEST(HashRouting, MatchesTheReferenceWithDistinctBalancedChoices) {
  for (int64_t E : {1, 4, 8, 13})
    for (int64_t k = 1; k <= std::min<int64_t>(E, 3); ++k) {
      SCOPED_TRACE("E=" + std::to_string(E) + " k=" + std::to_string(k));
      const int64_t V = 257;
      const std::vector<int32_t> routes = hash_routes(kSeed, V, E, k);
      EXPECT_EQ(routes, reference_hash(kSeed, V, E, k));
      for (int64_t v = 0; v < V; ++v)
        for (int64_t j = 0; j < k; ++j) {
          ASSERT_GE(routes[v * k + j], 0);
          ASSERT_LT(routes[v * k + j], E);
          for (int64_t i = 0; i < j; ++i) ASSERT_NE(routes[v * k + i], routes[v * k + j]) << "token " << v;
        }
      // A token's first choice does not depend on k: choice j is a function of (seed, v, j) only.
      const std::vector<int32_t> first = hash_routes(kSeed, V, E, 1);
      for (int64_t v = 0; v < V; ++v) EXPECT_EQ(routes[v * k], first[v]);
    }
  EXPECT_NE(hash_routes(kSeed, 64, 8, 2), hash_routes(kSeed + 1, 64, 8, 2)) << "the seed must matter";
  // Balanced in expectation: each of E = 8 experts gets V k / E = 5000 of the V k = 40000 choices. A count
  // is a sum of 40000 nearly independent indicators of probability 1/8: standard deviation about
  // sqrt(40000 / 8 * 7 / 8) = 66; 400 is 6 of them.
  std::vector<int64_t> count(8, 0);
  for (int32_t e : hash_routes(kSeed, 20000, 8, 2)) ++count[e];
  for (int64_t c : count) EXPECT_NEAR(static_cast<double>(c), 5000.0, 400.0);
}

TEST(RoutingTable, ReadsIdsRangesTheDefaultAndComments) {
  TempDir dir;
  const std::string path = dir.write("map.txt",
                                     "# token id: experts\n"
                                     "\n"
                                     "0: 3 1\n"
                                     "  2-4:\t0 2   # a range, tab separated\n"
                                     "*: 1 0\n"
                                     "7: 2 3\r\n");
  const std::vector<int32_t> want = {3, 1, 1, 0, 0, 2, 0, 2, 0, 2, 1, 0, 1, 0, 2, 3};
  EXPECT_EQ(read_routing_table(path, 8, 4, 2), want);
  // Without a '*' line every id must be listed.
  const std::string all = dir.write("all.txt", "0-1: 2\n2: 0\n");
  EXPECT_EQ(read_routing_table(all, 3, 4, 1), (std::vector<int32_t>{2, 2, 0}));
}

TEST(RoutingTable, BadFilesNameTheFileTheLineAndWhatIsAccepted) {
  TempDir dir;
  struct Case {
    std::string text;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"0: 1 2\nbad line\n", {"line 2", "'bad line' does not start with 'ID:'", "accepted lines"}},
      {"0 1 2\n", {"line 1", "does not start with 'ID:'"}},
      {"x: 1 2\n", {"line 1", "token ids 'x' are not 'ID' or 'FIRST-LAST'"}},
      {"-1: 1 2\n", {"line 1", "token ids '-1'"}},
      {"8: 1 2\n", {"line 1", "token id 8 is outside [0, vocab_size = 8)"}},
      {"2-9: 1 2\n", {"line 1", "token id 9 is outside [0, vocab_size = 8)"}},
      {"5-3: 1 2\n", {"line 1", "the range 5-3 is empty", "FIRST <= LAST"}},
      {"0: 1 4\n", {"line 1", "expert 4 is outside [0, num_experts = 4)"}},
      {"0: 1 z\n", {"line 1", "expert 'z' is not a number"}},
      {"0: 1\n", {"line 1", "lists 1 expert(s); expected top_k = 2"}},
      {"0: 1 2 3\n", {"line 1", "lists 3 expert(s); expected top_k = 2"}},
      {"0: 2 2\n", {"line 1", "expert 2 is listed twice", "distinct"}},
      {"0-3: 1 2\n\n3: 0 1\n", {"line 3", "token id 3 is already listed on line 1"}},
      {"*: 1 2\n*: 0 1\n", {"line 2", "a second '*' line (the first is line 1)"}},
      {"0-6: 1 2\n", {"1 token id(s) are not listed, the first 7", "no '*' line", "vocab_size = 8"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string path = dir.write("bad.txt", c.text);
    const std::string message = error_message([&] { read_routing_table(path, 8, 4, 2); });
    EXPECT_CONTAINS(message, "routing_table = " + path);
    EXPECT_TRUE(contains_all(message, c.needles));
  }
  EXPECT_CONTAINS(error_message([&] { read_routing_table(dir.file("missing.txt"), 8, 4, 2); }),
                  "routing_table = " + dir.file("missing.txt"), "cannot open", "accepted: a text file");
  EXPECT_CONTAINS(error_message([&] { read_routing_table(dir.path(), 8, 4, 2); }), "not a regular file");
}

MoEConfig static_config(Routing routing, const std::string& table, double capacity_factor) {
  MoEConfig cfg = moe_test_config(6, 4, 2, 8, Activation::GELU);
  cfg.routing = routing;
  cfg.routing_table = table;
  cfg.vocab_size = 10;
  cfg.capacity_factor = capacity_factor;
  cfg.min_capacity = 0;
  cfg.init_std = 0.5f;  // O(1) expert outputs
  return cfg;
}

double gelu(double v) { return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// y_t = sum over t's kept choices j of (1/k) expert_{e_tj}(x_t), in double, with choices kept in token
// order (drop policy position) up to `capacity` per expert (< 0: all).
std::vector<double> reference_output(const MoELayer& layer, const Tensor& x, const std::vector<int32_t>& routes,
                                     const std::vector<int32_t>& ids, int64_t capacity) {
  const MoEConfig& c = layer.config();
  const int64_t T = x.dim(0), d = c.d_model, h = c.expert_hidden, k = c.top_k;
  const float* w_in = layer.weights.w_in.f32();
  const float* w_out = layer.weights.w_out.f32();
  std::vector<double> y(T * d, 0.0);
  std::vector<int64_t> used(c.num_experts, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = routes[ids[t] * k + j];
      if (capacity >= 0 && used[e]++ >= capacity) continue;
      for (int64_t o = 0; o < d; ++o) {
        double out = 0;
        for (int64_t i = 0; i < h; ++i) {
          double a = 0;
          for (int64_t q = 0; q < d; ++q) a += double(x.f32()[t * d + q]) * w_in[(e * d + q) * h + i];
          out += gelu(a) * w_out[(e * h + i) * d + o];
        }
        y[t * d + o] += out / static_cast<double>(k);
      }
    }
  return y;
}

TEST(StaticRoutingLayer, RoutesByTokenIdWithoutARouterOrLosses) {
  TempDir dir;
  const std::string table = dir.write("map.txt", "0-4: 0 1\n5: 3 2\n*: 2 0\n");
  const std::vector<int32_t> ids = {0, 5, 9, 3, 5, 5, 1, 7, 2, 5, 6, 0};
  const int64_t T = static_cast<int64_t>(ids.size());
  for (Routing routing : {Routing::Hash, Routing::Table})
    for (double factor : {0.0, 1.0}) {  // 1.0: C = ceil(2 * 12 / 4) = 6, which the table overfills
      SCOPED_TRACE(std::string(to_string(routing)) + " capacity_factor=" + std::to_string(factor));
      const MoEConfig cfg = static_config(routing, routing == Routing::Table ? table : "", factor);
      MoELayer layer(cfg, kSeed);
      EXPECT_FALSE(layer.weights.w_gate.defined());
      ParameterRegistry registry;
      layer.register_parameters(registry, "moe");
      ASSERT_EQ(registry.all().size(), 2u) << "no router parameter";
      EXPECT_EQ(registry.all()[0].name, "moe.w_in");
      EXPECT_EQ(registry.all()[1].name, "moe.w_out");
      const std::vector<int32_t> routes = static_routes(layer.config(), kSeed);
      if (routing == Routing::Hash) {
        EXPECT_EQ(routes, reference_hash(kSeed, 10, 4, 2));
      }

      const Tensor x = normal_tensor({T, 6}, 1.0f, kSeed, "static.x");
      const Tensor token_ids = Tensor::from_ints({T}, ids);
      Tensor y = Tensor::zeros({T, 6});
      layer.forward(y, x, /*training=*/true, &token_ids);
      const int64_t C = expert_capacity(factor, T, 2, 4, 0);
      const std::vector<double> want = reference_output(layer, x, routes, ids, C);
      for (int64_t i = 0; i < T * 6; ++i)  // float32 sums of 8-term products of O(1) values: 1e-5 is ample
        ASSERT_NEAR(y.f32()[i], want[i], 1e-5 * (1.0 + std::fabs(want[i]))) << "element " << i;
      const MoEStats& st = layer.stats();
      EXPECT_EQ(st.aux_loss, 0.0);
      EXPECT_EQ(st.z_loss, 0.0);
      if (routing == Routing::Table && factor > 0) {
        EXPECT_GT(st.dropped_total, 0) << "the drop case is vacuous";
      }
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < 2; ++j) {
          EXPECT_EQ(layer.router_output().expert.i32()[t * 2 + j], routes[ids[t] * 2 + j]);
          EXPECT_EQ(layer.router_output().weight.f32()[t * 2 + j], 0.5f);
        }
      // The backward reaches the experts and x, and no router.
      Tensor dx = Tensor::zeros({T, 6});
      layer.backward(dx, normal_tensor({T, 6}, 1.0f, kSeed, "static.dy"));
      EXPECT_GT(max_abs(dx), 0.0);
      EXPECT_GT(max_abs(layer.grads.w_in), 0.0);
      EXPECT_FALSE(layer.grads.w_gate.defined());
    }
}

TEST(StaticRoutingLayer, MissingOrBadTokenIdsAreRefused) {
  MoELayer layer(static_config(Routing::Hash, "", 0.0), kSeed);
  const Tensor x = normal_tensor({3, 6}, 1.0f, kSeed, "static.x");
  Tensor y = Tensor::zeros({3, 6});
  EXPECT_CONTAINS(error_message([&] { layer.forward(y, x, true); }),
                  "routing = hash routes each token by its id, but no token_ids were given");
  const Tensor short_ids = Tensor::from_ints({2}, {0, 1});
  EXPECT_CONTAINS(error_message([&] { layer.forward(y, x, true, &short_ids); }), "token_ids");
  const Tensor bad_ids = Tensor::from_ints({3}, {0, 10, 1});
  EXPECT_CONTAINS(error_message([&] { layer.forward(y, x, true, &bad_ids); }), "static_route_forward",
                  "token_ids[1] = 10 is out of range, expected [0, 10)");
}

TEST(StaticRoutingConfig, SettingsThatDoNotApplyAreRefusedNamingBothKeys) {
  TempDir dir;
  const std::string table = dir.write("map.txt", "*: 0 1\n");
  const MoEConfig good = static_config(Routing::Hash, "", 1.25);
  EXPECT_NO_THROW(good.validate());
  EXPECT_EQ(good.aux_loss_weight(), 0.0f);
  EXPECT_EQ(good.z_loss_weight(), 0.0f);
  EXPECT_NO_THROW(static_config(Routing::Table, table, 1.25).validate());
  struct Case {
    std::function<void(MoEConfig&)> edit;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {[](MoEConfig& c) { c.vocab_size = 0; }, {"routing = hash maps token ids", "vocab_size = 0"}},
      {[](MoEConfig& c) { c.routing = Routing::Table; }, {"routing = table needs routing_table"}},
      {[&](MoEConfig& c) { c.routing_table = table; },
       {"routing_table = " + table + " is read only with routing = table", "routing = hash"}},
      {[&](MoEConfig& c) { c.routing = Routing::TokenChoice, c.routing_table = table; },
       {"routing_table = ", "routing = token_choice"}},
      {[](MoEConfig& c) { c.score_function = ScoreFunction::Sigmoid; },
       {"routing = hash has no router scores", "score_function = sigmoid"}},
      {[](MoEConfig& c) { c.drop_policy = DropPolicy::Probs; }, {"routing = hash", "drop_policy = probs"}},
      {[](MoEConfig& c) { c.routed_scaling_factor = 2.5f; }, {"routing = hash", "routed_scaling_factor = 2.5"}},
      {[](MoEConfig& c) { c.jitter_eps = 0.1f; }, {"routing = hash has no router input", "jitter_eps = 0.1"}},
      {[](MoEConfig& c) { c.balancing = Balancing::AuxFree; }, {"routing = hash", "balancing = aux_free"}},
      {[](MoEConfig& c) { c.aux_loss_coeff = 0.01f; }, {"routing = hash has no router", "aux_loss_coeff = 0.01"}},
      {[](MoEConfig& c) { c.aux_loss_scope = AuxLossScope::Global; }, {"routing = hash", "aux_loss_scope = global"}},
      {[](MoEConfig& c) { c.z_loss_coeff = 0.001f; }, {"routing = hash has no router logits", "z_loss_coeff = 0.001"}},
      {[](MoEConfig& c) { c.routing_groups = 2; }, {"routing = hash", "routing_groups = 2"}},
      {[](MoEConfig& c) { c.routing = Routing::Table, c.routing_table = "/nonexistent/map.txt"; },
       {"routing_table = /nonexistent/map.txt: cannot open it"}},
  };
  for (const Case& c : cases) {
    MoEConfig cfg = good;
    c.edit(cfg);
    for (int through_layer = 0; through_layer < 2; ++through_layer) {
      SCOPED_TRACE(c.needles[0] + (through_layer ? " through MoELayer" : " through validate()"));
      const std::string message = error_message([&] {
        if (through_layer)
          MoELayer layer(cfg, kSeed);
        else
          cfg.validate();
      });
      EXPECT_TRUE(contains_all(message, c.needles));
    }
  }
}

TEST(StaticRoutingConfig, TheRoutingDescriptionNamesTheMode) {
  MoEConfig c = moe_test_config(6, 8, 2, 8, Activation::GELU);
  EXPECT_EQ(c.routing_description(), "token_choice, softmax scores");
  c.score_function = ScoreFunction::Sigmoid;
  c.routing_groups = 4;
  c.top_groups = 2;
  EXPECT_EQ(c.routing_description(), "token_choice, sigmoid scores, 4 groups, top 2 (top2_sum)");
  c.routing_groups = MoEConfig::kRoutingGroupsPerRank;
  EXPECT_EQ(c.routing_description(),
            "token_choice, sigmoid scores, one group per expert-parallel rank, top 2 (top2_sum)");
  c = moe_test_config(6, 8, 2, 8, Activation::GELU);
  c.routing = Routing::ExpertChoice;
  EXPECT_EQ(c.routing_description(), "expert_choice, softmax scores");
  c.routing = Routing::Hash;
  EXPECT_EQ(c.routing_description(), "hash (seeded token id -> 2 experts, weights 1/k)");
  c.routing = Routing::Table;
  c.routing_table = "maps/a.txt";
  c.top_k = 1;
  EXPECT_EQ(c.routing_description(), "table maps/a.txt (token id -> 1 expert, weights 1/k)");
}

}  // namespace
}  // namespace moe
