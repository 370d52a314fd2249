// Tests of moe-ckpt's library (tools/ckpt/): checkpoints written for one layout read back as the same
// whole tensors, experts placed by global id, outputs never overwriting, shard indexes checked
// against the manifest, the safetensors header, and each expert surgery's effect on every tensor
// indexed by expert, on the optimizer state, the usage and the config.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "tests/checkpoint_test_util.h"
#include "tests/test_util.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/safetensors.h"
#include "tools/ckpt/surgery.h"

namespace moe::ckpt {
namespace {

using namespace moe::test;  // NOLINT(google-build-using-namespace): the shared test helpers

namespace fs = std::filesystem;

// A tensor whose element i is base + i (distinct values, so a misplaced row is seen).
Tensor iota(const Shape& shape, float base) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = base + static_cast<float>(i);
  return t;
}

bool same(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (a.f32()[i] != b.f32()[i]) return false;
  return true;
}

// A 2-layer model, layer 1 MoE with 4 experts (d 4, expert hidden 2, swiglu), layer 0 dense
// (hidden 2), AdamW state for the MoE layer's parameters only (enough for the surgery's rules).
CheckpointData small_checkpoint() {
  CheckpointData data;
  data.dir = "test";
  data.config = parse_train_config(
      "model:\n  vocab_size: 16\n  d_model: 4\n  n_heads: 2\n  n_layers: 2\n  seq_len: 8\n  moe_every: 2\n"
      "  dense_hidden: 2\nmoe:\n  num_experts: 4\n  top_k: 2\n  expert_hidden: 2\ndata:\n  synthetic_domains: 2\n"
      "  synthetic_branching: 2\n",
      "test.yaml");
  data.header.set_run_id("run0");
  data.header.set_step(7);
  data.header.mutable_state()->set_optimizer_steps(7);
  data.header.mutable_state()->add_moe_layer_calls(7);
  checkpoint::ExpertUsage* u = data.header.add_expert_usage();
  u->set_layer(1);
  for (int64_t t : {10, 0, 30, 60}) u->add_tokens(t);
  data.tensors = {
      {"embedding", iota({16, 4}, 0), false},
      {"layers.0.ffn.w_in", iota({4, 4}, 100), false},
      {"layers.0.ffn.w_out", iota({2, 4}, 200), false},
      {"layers.1.moe.w_gate", iota({4, 4}, 300), false},
      {"layers.1.moe.w_in", iota({4, 4, 4}, 400), true},
      {"layers.1.moe.w_out", iota({4, 2, 4}, 500), true},
      {"layers.1.moe.selection_bias", iota({4}, 600), false},
      {"adamw.m.layers.1.moe.w_gate", iota({4, 4}, 700), false},
      {"adamw.m.layers.1.moe.w_in", iota({4, 4, 4}, 800), true},
  };
  data.sort();
  return data;
}

TEST(CkptNames, ParametersAndNaturalOrder) {  // optimizer state names: test_optim's OptimizerStateNames
  EXPECT_FALSE(is_parameter("adamw.m.layers.0.moe.w_in"));
  EXPECT_TRUE(is_parameter("layers.0.moe.w_in"));
  EXPECT_FALSE(is_parameter("layers.1.moe.selection_bias"));
  EXPECT_TRUE(natural_less("layers.2.x", "layers.10.x"));
  EXPECT_FALSE(natural_less("layers.10.x", "layers.2.x"));
  EXPECT_TRUE(natural_less("a", "ab"));
  EXPECT_FALSE(natural_less("a", "a"));
}

TEST(CkptTensors, GatherAxisCopiesAndZeroFills) {
  Tensor t = iota({2, 3}, 1);  // [[1 2 3] [4 5 6]]
  Tensor g = gather_axis(t, 1, {2, -1, 0});
  EXPECT_EQ(g.shape(), (Shape{2, 3}));
  const std::vector<float> want = {3, 0, 1, 6, 0, 4};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(g.f32()[i], want[i]) << i;
  Tensor r = gather_axis(t, 0, {1, 1});
  EXPECT_EQ(r.f32()[0], 4);
  EXPECT_EQ(r.f32()[3], 4);
}

// Written for 4 ranks with ep 2: experts 0-1 in shard 0, 2-3 in shard 1, nothing expert-indexed in
// shards 2 and 3; read back as the same whole tensors; rewritten for one rank, still the same.
TEST(CkptWrite, LayoutRoundTripPlacesExpertsByGlobalId) {
  TempDir tmp("moe_test_ckpt_tool");
  CheckpointData data = small_checkpoint();
  const std::string out = tmp.path() + "/w4";
  write_checkpoint_data(data, 4, 2, out);
  EXPECT_FALSE(fs::exists(out + ".tmp-" + std::to_string(::getpid())));

  std::unique_ptr<CheckpointReader> reader = open_checkpoint(out);
  const checkpoint::Manifest& m = reader->manifest();
  EXPECT_EQ(m.run_id(), "run0");
  EXPECT_EQ(m.step(), 7);
  EXPECT_EQ(m.layout().world_size(), 4);
  EXPECT_EQ(m.layout().ep(), 2);
  EXPECT_EQ(m.layout().experts_per_rank(), 2);
  EXPECT_EQ(m.shards_size(), 4);
  EXPECT_EQ(m.rank_states_size(), 4);
  for (const auto& rs : m.rank_states()) EXPECT_EQ(rs.counters_size(), 0);
  int whole = 0;
  for (const auto& e : m.tensors()) {
    if (e.expert() >= 0)
      EXPECT_EQ(e.file(), e.expert() < 2 ? "shard_00000.bin" : "shard_00001.bin") << e.name();
    else
      ++whole;
    EXPECT_EQ(e.offset() % 64, 0u);
  }
  EXPECT_EQ(whole, 6);
  EXPECT_TRUE(reader->verify().empty());
  const TrainConfig cfg = parse_manifest_config(m, out);
  EXPECT_EQ(cfg.parallel.ep, 2);
  EXPECT_EQ(cfg.moe.num_experts, 4);

  CheckpointData back = load_checkpoint_data(out);
  ASSERT_EQ(back.tensors.size(), data.tensors.size());
  for (size_t i = 0; i < data.tensors.size(); ++i) {
    EXPECT_EQ(back.tensors[i].name, data.tensors[i].name);
    EXPECT_EQ(back.tensors[i].expert, data.tensors[i].expert);
    EXPECT_TRUE(same(back.tensors[i].data, data.tensors[i].data)) << data.tensors[i].name;
  }
  EXPECT_EQ(back.header.expert_usage_size(), 1);
  EXPECT_EQ(back.header.state().optimizer_steps(), 7);

  write_checkpoint_data(back, 1, 1, tmp.path() + "/w1");
  CheckpointData one = load_checkpoint_data(tmp.path() + "/w1");
  for (size_t i = 0; i < data.tensors.size(); ++i) EXPECT_TRUE(same(one.tensors[i].data, data.tensors[i].data));
}

TEST(CkptWrite, RefusesAnExistingOutputAndBadLayouts) {
  TempDir tmp("moe_test_ckpt_tool");
  CheckpointData data = small_checkpoint();
  fs::create_directory(tmp.path() + "/exists");
  EXPECT_CONTAINS(error_message([&] { write_checkpoint_data(data, 2, 2, tmp.path() + "/exists"); }),
                  "already exists; moe-ckpt does not overwrite");
  EXPECT_TRUE(fs::is_empty(tmp.path() + "/exists"));
  EXPECT_THROW(write_checkpoint_data(data, 4, 3, tmp.path() + "/a"), InvalidArgument);  // 3 does not divide 4
  EXPECT_THROW(write_checkpoint_data(data, 3, 3, tmp.path() + "/b"), InvalidArgument);  // 4 experts over 3
  // Nothing left behind by the refusals.
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()), 1);
}

// Opening compares each shard index with the manifest: an index sealed again with one CRC changed
// is refused, naming the index and the manifest.
TEST(CkptVerify, ShardIndexDisagreeingWithTheManifestIsReported) {
  TempDir tmp("moe_test_ckpt_tool");
  const std::string out = tmp.path() + "/c";
  write_checkpoint_data(small_checkpoint(), 2, 2, out);
  const std::string index_path = out + "/shard_00001.index";
  checkpoint::ShardIndex index;
  ASSERT_TRUE(read_metadata_message(index_path, &index));
  ASSERT_GT(index.tensors_size(), 0);
  index.mutable_tensors(0)->set_crc32c(index.tensors(0).crc32c() ^ 1);
  write_metadata_message(index_path, index);
  const std::string message = error_message<CheckpointError>([&] { open_checkpoint(out); });
  EXPECT_CONTAINS(message, "shard_00001.index' disagrees with '");
  EXPECT_CONTAINS(message, "MANIFEST");
}

TEST(CkptSafetensors, HeaderIsPaddedJsonWithOffsets) {
  TensorInfo a{"a", false, {2, 3}, DType::F32, {}}, b{"b\"q", false, {5}, DType::I32, {}};
  uint64_t data_bytes = 0;
  const std::string h = safetensors_header({&a, &b}, {{"step", "3"}, {"config_yaml", "x: 1\n"}}, &data_bytes);
  EXPECT_EQ(h.size() % 8, 0u);
  EXPECT_EQ(data_bytes, 44u);
  EXPECT_CONTAINS(h, "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}");
  EXPECT_CONTAINS(h, "\"b\\\"q\":{\"dtype\":\"I32\",\"shape\":[5],\"data_offsets\":[24,44]}");
  EXPECT_CONTAINS(h, "\"__metadata__\":{\"config_yaml\":\"x: 1\\n\",\"step\":\"3\"}");
}

TEST(CkptSurgery, PruneKeepsRowsColumnsEntriesStateAndUsage) {
  CheckpointData data = small_checkpoint();
  std::vector<std::string> notes;
  prune_experts(data, {1, 3}, &notes);
  EXPECT_EQ(data.config.moe.num_experts, 2);
  EXPECT_EQ(data.config.moe.top_k, 2);
  const Tensor w_in = data.find("layers.1.moe.w_in")->data;  // rows 1 and 3 of 16 elements each
  EXPECT_EQ(w_in.shape(), (Shape{2, 4, 4}));
  EXPECT_EQ(w_in.f32()[0], 400 + 16);
  EXPECT_EQ(w_in.f32()[16], 400 + 48);
  const Tensor gate = data.find("layers.1.moe.w_gate")->data;  // (4, 4) -> columns 1 and 3
  EXPECT_EQ(gate.shape(), (Shape{4, 2}));
  EXPECT_EQ(gate.f32()[0], 301);
  EXPECT_EQ(gate.f32()[1], 303);
  EXPECT_EQ(gate.f32()[2], 305);
  EXPECT_EQ(data.find("adamw.m.layers.1.moe.w_gate")->data.f32()[1], 703);
  EXPECT_EQ(data.find("adamw.m.layers.1.moe.w_in")->data.f32()[16], 800 + 48);
  const Tensor bias = data.find("layers.1.moe.selection_bias")->data;
  EXPECT_EQ(bias.shape(), (Shape{2}));
  EXPECT_EQ(bias.f32()[1], 603);
  EXPECT_EQ(data.header.expert_usage(0).tokens_size(), 2);
  EXPECT_EQ(data.header.expert_usage(0).tokens(1), 60);
  EXPECT_TRUE(same(data.find("layers.0.ffn.w_in")->data, iota({4, 4}, 100)));  // dense layers untouched

  prune_experts(data, {1}, &notes);  // top_k 2 > 1 expert: clamped, and said so
  EXPECT_EQ(data.config.moe.top_k, 1);
  ASSERT_FALSE(notes.empty());
  EXPECT_CONTAINS(notes.back(), "moe.top_k = 2");
  EXPECT_THROW(prune_experts(data, {0, 0}, &notes), InvalidArgument);
  EXPECT_THROW(prune_experts(data, {5}, &notes), InvalidArgument);
}

TEST(CkptSurgery, MinUsageKeepsExpertsAboveTheShareInAnyLayer) {
  CheckpointData data = small_checkpoint();  // shares 0.1, 0, 0.3, 0.6
  EXPECT_EQ(experts_with_usage(data, 0.1), (std::vector<int64_t>{0, 2, 3}));
  EXPECT_EQ(experts_with_usage(data, 0.5), (std::vector<int64_t>{3}));
  data.header.clear_expert_usage();
  EXPECT_THROW(experts_with_usage(data, 0.1), InvalidArgument);
}

TEST(CkptSurgery, AddExpertsCopiesOrDrawsWithZeroOptimizerState) {
  CheckpointData data = small_checkpoint();
  std::vector<std::string> notes;
  add_experts(data, 2, 1, 5, &notes);
  EXPECT_EQ(data.config.moe.num_experts, 6);
  const Tensor w_in = data.find("layers.1.moe.w_in")->data;
  ASSERT_EQ(w_in.shape(), (Shape{6, 4, 4}));
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(w_in.f32()[4 * 16 + i], w_in.f32()[16 + i]);
    EXPECT_EQ(w_in.f32()[5 * 16 + i], w_in.f32()[16 + i]);
  }
  const Tensor gate = data.find("layers.1.moe.w_gate")->data;  // (4, 6): columns 4, 5 copy column 1
  EXPECT_EQ(gate.f32()[4], 301);
  EXPECT_EQ(gate.f32()[6 + 5], 305);
  EXPECT_EQ(data.find("adamw.m.layers.1.moe.w_gate")->data.f32()[4], 0);
  EXPECT_EQ(data.find("adamw.m.layers.1.moe.w_in")->data.f32()[4 * 16], 0);
  EXPECT_EQ(data.find("layers.1.moe.selection_bias")->data.f32()[5], 601);
  EXPECT_EQ(data.header.expert_usage(0).tokens_size(), 6);

  CheckpointData fresh = small_checkpoint(), again = small_checkpoint();
  add_experts(fresh, 4, -1, 9, &notes);
  add_experts(again, 4, -1, 9, &notes);
  const Tensor f = fresh.find("layers.1.moe.w_out")->data;
  EXPECT_TRUE(same(f, again.find("layers.1.moe.w_out")->data));  // seeded
  double sq = 0;
  for (int64_t i = 4 * 8; i < 8 * 8; ++i) sq += f.f32()[i] * f.f32()[i];
  // 32 draws of N(0, 0.02 / sqrt(4) = 0.01): the sample std lies within a factor 2 with certainty
  // for practical purposes (chi-square with 32 degrees of freedom).
  const double sd = std::sqrt(sq / 32);
  EXPECT_GT(sd, 0.005);
  EXPECT_LT(sd, 0.02);
  EXPECT_EQ(fresh.find("layers.1.moe.w_gate")->data.f32()[4], 0);
  EXPECT_THROW(add_experts(fresh, 1, 99, 1, &notes), InvalidArgument);
}

TEST(CkptSurgery, UpcycleCopiesTheDenseFfnAndResetsTheOptimizer) {
  CheckpointData data = small_checkpoint();
  std::vector<std::string> notes;
  EXPECT_THROW(upcycle(data, 4, 3, 1, &notes), InvalidArgument);  // layer 1 would become dense
  EXPECT_THROW(upcycle(data, 8, 1, 1, &notes), InvalidArgument);  // layer 1 has 4 experts
  upcycle(data, 4, 1, 1, &notes);
  EXPECT_EQ(data.config.model.moe_every, 1);
  EXPECT_EQ(data.config.moe.expert_hidden, 2);
  EXPECT_EQ(data.find("layers.0.ffn.w_in"), nullptr);
  const Tensor w_in = data.find("layers.0.moe.w_in")->data;
  ASSERT_EQ(w_in.shape(), (Shape{4, 4, 4}));
  for (int e = 0; e < 4; ++e) EXPECT_TRUE(same(w_in.rows(e, e + 1).reshape({4, 4}), iota({4, 4}, 100)));
  EXPECT_TRUE(data.find("layers.0.moe.w_out")->expert);
  EXPECT_EQ(data.find("layers.0.moe.w_gate")->data.shape(), (Shape{4, 4}));
  EXPECT_TRUE(same(data.find("layers.1.moe.w_in")->data, iota({4, 4, 4}, 400)));  // kept as it was
  // Every parameter has zero AdamW state; the old state is gone.
  for (const char* p : {"embedding", "layers.0.moe.w_in", "layers.1.moe.w_gate"}) {
    for (const char* slot : {"adamw.m.", "adamw.v."}) {
      const NamedTensor* s = data.find(std::string(slot) + p);
      ASSERT_NE(s, nullptr) << slot << p;
      for (int64_t i = 0; i < s->data.numel(); ++i) ASSERT_EQ(s->data.f32()[i], 0);
    }
  }
  EXPECT_EQ(data.find("adamw.m.layers.0.ffn.w_in"), nullptr);
  EXPECT_EQ(data.header.state().optimizer_steps(), 0);
  ASSERT_EQ(data.header.state().moe_layer_calls_size(), 2);
  EXPECT_EQ(data.header.state().moe_layer_calls(0), 0u);
  EXPECT_EQ(data.header.state().moe_layer_calls(1), 7u);
  ASSERT_EQ(data.header.expert_usage_size(), 2);
  EXPECT_EQ(data.header.expert_usage(0).layer(), 0);
  EXPECT_EQ(data.header.expert_usage(1).tokens(3), 60);
}

}  // namespace
}  // namespace moe::ckpt
