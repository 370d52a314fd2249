// Hostile checkpoints: the cases of damaged or crafted metadata that once crashed a reader (each a
// regression test), and a seeded fuzz loop that mutates a real checkpoint (flipped bytes,
// truncations, and protobuf fields changed and sealed again with a correct CRC, so the semantic
// checks must catch them) and requires every consumer - CheckpointReader::open and verify, moe-ckpt's
// library and its read-only commands - to refuse cleanly, naming the checkpoint, or to load cleanly.
// No crash, no sanitizer report (it runs in the ASan/UBSan build too).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/checkpoint/checkpoint.h"
#include "tests/checkpoint_test_util.h"
#include "tests/test_util.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"

namespace moe::ckpt {
namespace {

using namespace moe::test;  // NOLINT(google-build-using-namespace): the shared test helpers

namespace fs = std::filesystem;

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

const char* const kConfig =
    "model:\n  vocab_size: 16\n  d_model: 4\n  n_heads: 2\n  n_layers: 2\n  seq_len: 8\n  moe_every: 2\n"
    "  dense_hidden: 2\nmoe:\n  num_experts: 4\n  top_k: 2\n  expert_hidden: 2\ndata:\n  synthetic_domains: 2\n"
    "  synthetic_branching: 2\nparallel:\n  ep: 2\n";

Tensor filled(const Shape& shape, float base, DType dtype = DType::F32) {
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::F32) t.f32()[i] = base + 0.25f * static_cast<float>(i);
    else t.i32()[i] = static_cast<int32_t>(base) + static_cast<int32_t>(i);
  }
  return t;
}

// A real checkpoint of 2 ranks at ep 2 (4 experts, layer 1 MoE), written by the writer moe-train and
// moe-ckpt use, with per-rank state, expert usage and odd-sized tensors (padding between them).
void write_small_checkpoint(const std::string& dir) {
  SaveRequest req;
  req.step = 7;
  checkpoint::Manifest& h = req.header;
  h.set_run_id("0123456789abcdef");
  h.set_config_yaml(to_yaml(parse_train_config(kConfig, "test.yaml")));
  checkpoint::Layout* l = h.mutable_layout();
  l->set_world_size(2);
  l->set_ep(2);
  l->set_num_experts(4);
  l->set_experts_per_rank(2);
  l->set_placement("rank r holds experts [(r % ep) * E/ep, (r % ep + 1) * E/ep)");
  checkpoint::TrainingState* s = h.mutable_state();
  s->set_optimizer_steps(6);
  s->set_skipped_steps(1);
  s->set_consecutive_nonfinite(1);
  s->set_loader_sequences_done(28);
  s->add_moe_layer_calls(7);
  s->add_sums(1.5);
  s->add_counters(3);
  checkpoint::ExpertUsage* u = h.add_expert_usage();
  u->set_layer(1);
  for (int64_t t : {10, 0, 30, 60}) u->add_tokens(t);
  const Tensor w_in = filled({4, 4, 4}, 400), w_out = filled({4, 2, 4}, 500);
  std::vector<std::vector<CheckpointTensor>> per_rank(2);
  per_rank[0] = {{"embedding", -1, filled({16, 4}, 0)}, {"layers.1.moe.w_gate", -1, filled({4, 4}, 300)},
                 {"odd", -1, filled({3}, 7)}};
  per_rank[1] = {{"layers.1.moe.selection_bias", -1, filled({4}, 600)}, {"counts", -1, filled({5}, 9, DType::I32)},
                 {"empty", -1, filled({0, 3}, 0)}};
  for (int64_t e = 0; e < 4; ++e) {
    per_rank[e / 2].push_back({"layers.1.moe.w_in", e, w_in.rows(e, e + 1).reshape({4, 4})});
    per_rank[e / 2].push_back({"layers.1.moe.w_out", e, w_out.rows(e, e + 1).reshape({2, 4})});
  }
  std::vector<checkpoint::RankState> states(2);
  for (int r = 0; r < 2; ++r) {
    states[r].add_counters(10 + r);
    states[r].add_counters(20 + r);
    states[r].add_sums(0.5 * r);
  }
  const Status st = write_checkpoint_directory(dir, req, per_rank, states);
  ASSERT_TRUE(st.ok()) << st.to_string();
}

// Runs a moe-ckpt command with its output (reports, and its damage lines on stderr) discarded.
void quietly(int (*command)(const Args&), const std::vector<std::string>& positional) {
  Args args;
  args.positional = positional;
  std::fflush(stdout);
  std::fflush(stderr);
  const int out = ::dup(1), err = ::dup(2), null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  ::dup2(null, 1);
  ::dup2(null, 2);
  ::close(null);
  auto restore = [&] {
    std::fflush(stdout);
    std::fflush(stderr);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::close(out);
    ::close(err);
  };
  try {
    command(args);
  } catch (...) {
    restore();
    throw;
  }
  restore();
}

// Every consumer of checkpoint `dir`, in turn. Returns "" when all of them load it cleanly, else the
// first refusal (a Status or a CheckpointError/InvalidArgument); any other exception fails the test,
// and a refusal must name the checkpoint.
std::string load_everything(const std::string& dir, const std::string& pristine) {
  std::string refusal;
  auto refuse = [&](const std::string& why) {
    EXPECT_CONTAINS(why, dir);
    if (refusal.empty()) refusal = why;
  };
  std::unique_ptr<CheckpointReader> reader;
  const Status opened = CheckpointReader::open(dir, &reader);
  if (!opened.ok()) {
    refuse(opened.to_string());
  } else {
    for (const std::string& p : reader->verify()) refuse(p);
    for (const TensorInfo& info : list_tensors(*reader)) {
      Tensor t;
      const Status s = read_tensor(*reader, info, &t);
      if (!s.ok()) refuse(s.to_string());
    }
  }
  // moe-ckpt's library and read-only commands: each refuses with an exception naming the checkpoint.
  const std::vector<std::function<void()>> consumers = {
      [&] { load_checkpoint_data(dir); },
      [&] { quietly(cmd_info, {dir}); },
      [&] { quietly(cmd_tensors, {dir}); },
      [&] { quietly(cmd_verify, {dir}); },
      [&] { quietly(cmd_diff, {pristine, dir}); },
  };
  for (const auto& consume : consumers) {
    try {
      consume();
    } catch (const CheckpointError& e) {
      refuse(e.what());
    } catch (const InvalidArgument& e) {
      refuse(e.what());
    }
  }
  return refusal;
}

class CheckpointHostile : public ::testing::Test {
 protected:
  void SetUp() override {
    pristine_ = tmp_.path() + "/pristine";
    write_small_checkpoint(pristine_);
    ASSERT_EQ(load_everything(pristine_, pristine_), "");
  }
  // A fresh copy of the pristine checkpoint at `dir`.
  void copy_to(const std::string& dir) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::copy(pristine_, dir, fs::copy_options::recursive);
  }
  // A copy whose manifest (and, with `index_too`, the matching entries and state of its indexes) is
  // changed by `edit` and sealed again with a correct CRC.
  std::string crafted(const std::function<void(checkpoint::Manifest&)>& edit) {
    const std::string dir = tmp_.path() + "/crafted";
    copy_to(dir);
    checkpoint::Manifest m;
    EXPECT_TRUE(read_metadata_message(dir + "/MANIFEST", &m));
    edit(m);
    write_metadata_message(dir + "/MANIFEST", m);
    return dir;
  }

  TempDir tmp_{"moe_test_checkpoint_fuzz"};
  std::string pristine_;
};

// --- the cases, each sealed with a correct CRC: refused by the semantic checks, naming the
// manifest and the field, by every consumer (moe-ckpt diff segfaulted on the overflowing shape, the
// negative dimension threw vector::_M_default_append, num_experts 2^40 std::bad_alloc) ---

struct Crafted {
  const char* what;
  std::function<void(checkpoint::Manifest&)> edit;
  const char* field;  // expected in the message
};

TEST_F(CheckpointHostile, ImpossibleValuesAreRefusedNamingTheField) {
  auto entry = [](checkpoint::Manifest& m, const std::string& name) {
    for (auto& e : *m.mutable_tensors())
      if (e.name() == name) return &e;
    ADD_FAILURE() << "no entry " << name;
    return m.mutable_tensors(0);
  };
  const std::vector<Crafted> cases = {
      {"world size 0", [](auto& m) { m.mutable_layout()->set_world_size(0); }, "layout.world_size = 0"},
      {"world size disagreeing with the shards",
       [](auto& m) {
         m.mutable_layout()->set_world_size(4);
       },
       "has 2 shards but layout.world_size = 4"},
      {"negative step", [](auto& m) { m.set_step(-3); }, "step = -3 is negative"},
      {"negative optimizer steps", [](auto& m) { m.mutable_state()->set_optimizer_steps(-1); },
       "state.optimizer_steps = -1"},
      {"more optimizer steps than steps", [](auto& m) { m.mutable_state()->set_optimizer_steps(8); },
       "state.optimizer_steps = 8"},
      {"no per-rank state", [](auto& m) { m.clear_rank_states(); }, "has 0 rank_states"},
      {"empty expert_usage", [](auto& m) { m.clear_expert_usage(); }, "has 0 expert_usage entries"},
      {"expert usage of the wrong length", [](auto& m) { m.mutable_expert_usage(0)->add_tokens(1); },
       "expert_usage[0].tokens has 5 counts but layout.num_experts = 4"},
      {"num_experts 2^40",
       [](auto& m) {
         m.mutable_layout()->set_num_experts(int64_t{1} << 40);
         m.mutable_layout()->set_experts_per_rank(int64_t{1} << 39);
       },
       "expert_usage[0].tokens has 4 counts but layout.num_experts = 1099511627776"},
      {"num_experts 2^40 without MoE layers",
       [](auto& m) {
         m.mutable_layout()->set_num_experts(int64_t{1} << 40);
         m.mutable_layout()->set_experts_per_rank(int64_t{1} << 39);
         m.clear_expert_usage();
         m.mutable_state()->clear_moe_layer_calls();
       },
       "has 4 expert slices but layout.num_experts = 1099511627776"},
      {"a negative dimension",
       [&](auto& m) {
         auto* e = entry(m, "embedding");
         e->set_shape(0, -16);
         e->set_shape(1, -4);
       },
       "tensors[0] ('embedding').shape[0] = -16 is negative"},
      {"a shape whose byte size overflows 64 bits",
       [&](auto& m) {
         // (2^62, 2^62 + 16): its element count times 4 wraps to 256, the length of the original (16, 4).
         auto* e = entry(m, "embedding");
         e->set_shape(0, int64_t{1} << 62);
         e->set_shape(1, (int64_t{1} << 62) + 16);
       },
       "('embedding').shape (4611686018427387904, 4611686018427387920) is too large"},
      {"an entry outside its file", [&](auto& m) { entry(m, "odd")->set_offset(1 << 20); }, "('odd').offset = 1048576"},
      {"a file outside the checkpoint", [&](auto& m) { entry(m, "odd")->set_file("../pristine/shard_00000.bin"); },
       "('odd').file = '../pristine/shard_00000.bin' is not a shard"},
      {"an expert slice missing",
       [&](auto& m) {
         auto* all = m.mutable_tensors();
         for (int i = 0; i < all->size(); ++i)
           if (all->Get(i).name() == "layers.1.moe.w_out" && all->Get(i).expert() == 3) all->erase(all->begin() + i);
         m.mutable_shards(1)->set_bytes(m.shards(1).bytes() - 32);
       },
       "tensor 'layers.1.moe.w_out' has 3 expert slices"},
  };
  for (const Crafted& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string dir = crafted(c.edit);
    const std::string refusal = load_everything(dir, pristine_);
    EXPECT_CONTAINS(refusal, "'" + dir + "/MANIFEST': ");
    EXPECT_CONTAINS(refusal, c.field);
  }
}

// A field changed without its checksum (optimizer_steps, world_size, the stored config, a rank's state
// in its index) is refused by the checksum of its file.
TEST_F(CheckpointHostile, FieldsChangedWithoutTheirChecksumAreRefused) {
  const std::string dir = tmp_.path() + "/edited";
  for (const std::string file : {"MANIFEST", "shard_00001.index"}) {
    for (int field = 0; field < 3; ++field) {
      copy_to(dir);
      const std::string path = dir + "/" + file;
      checkpoint::MetadataFile sealed;
      ASSERT_TRUE(sealed.ParseFromString(read_whole(path)));
      checkpoint::Manifest m;
      checkpoint::ShardIndex index;
      if (file == "MANIFEST") {
        ASSERT_TRUE(m.ParseFromString(sealed.message()));
        if (field == 0) m.mutable_state()->set_optimizer_steps(5);
        if (field == 1) m.mutable_layout()->set_world_size(1);
        if (field == 2) m.set_config_yaml(m.config_yaml() + "# edited\n");
        sealed.set_message(m.SerializeAsString());  // the recorded CRC is left as it was
      } else {
        ASSERT_TRUE(index.ParseFromString(sealed.message()));
        if (field == 0) index.mutable_state()->set_counters(0, 99);
        if (field == 1) index.mutable_state()->add_sums(1);
        if (field == 2) index.set_file_bytes(index.file_bytes() + 64);
        sealed.set_message(index.SerializeAsString());
      }
      write_whole(path, sealed.SerializeAsString());
      const std::string refusal = load_everything(dir, pristine_);
      EXPECT_CONTAINS(refusal, "'" + path + "' is damaged: CRC32C");
    }
  }
}

// --- the fuzz loop ---

// A value of the kind that breaks size arithmetic, or a small one.
int64_t nasty(std::mt19937_64& rng) {
  static const int64_t pool[] = {-1, 0, 1, 2, 3, 4, 63, 64, 65, 255, int64_t{1} << 31, int64_t{1} << 32,
                                 int64_t{1} << 40, int64_t{1} << 62, kMax, std::numeric_limits<int64_t>::min()};
  return rng() % 3 == 0 ? static_cast<int64_t>(rng() % 100) - 10 : pool[rng() % std::size(pool)];
}

// Changes one field of an entry.
void mutate_entry(checkpoint::TensorEntry& e, uint64_t choice, int64_t v) {
  switch (choice % 9) {
    case 0: e.clear_shape(); for (int i = 0; i < 1 + static_cast<int>(v & 3); ++i) e.add_shape(v >> i); break;
    case 1: if (e.shape_size() > 0) e.set_shape(static_cast<int>(static_cast<uint64_t>(v) % e.shape_size()), v); break;
    case 2: e.add_shape(v); break;
    case 3: e.set_offset(static_cast<uint64_t>(v)); break;
    case 4: e.set_length(static_cast<uint64_t>(v)); break;
    case 5: e.set_expert(v); break;
    case 6: e.set_dtype(v & 1 ? "float64" : "int32"); break;
    case 7: e.set_file(v & 1 ? "../MANIFEST" : "shard_00001.bin"); break;
    default: e.set_name(v & 1 ? "" : "embedding"); break;
  }
}

// Changes one field of a manifest; entry edits are applied to the matching index entry too, so that
// the semantic checks, not the comparison with the index, must catch them.
void mutate_manifest(checkpoint::Manifest& m, std::vector<checkpoint::ShardIndex>& indexes, std::mt19937_64& rng) {
  const int64_t v = nasty(rng);
  const uint64_t choice = rng();
  // An index into a repeated field of `size` > 0 elements: an earlier mutation may have emptied it.
  auto pick = [&rng](int size) { return static_cast<int>(rng() % static_cast<uint64_t>(size)); };
  switch (choice % 16) {
    case 0: m.set_step(v); break;
    case 1: m.set_format_version(static_cast<uint32_t>(v)); break;
    case 2: m.mutable_layout()->set_world_size(static_cast<int32_t>(v)); break;
    case 3: m.mutable_layout()->set_ep(static_cast<int32_t>(v)); break;
    case 4:
      m.mutable_layout()->set_num_experts(v);
      m.mutable_layout()->set_experts_per_rank(m.layout().ep() ? v / m.layout().ep() : v);
      break;
    case 5: if (m.shards_size() > 0) m.mutable_shards(pick(m.shards_size()))->set_bytes(static_cast<uint64_t>(v)); break;
    case 6:
      if (rng() % 2 || m.rank_states_size() == 0) m.clear_rank_states();
      else m.mutable_rank_states(0)->set_rank(static_cast<int32_t>(v));
      break;
    case 7:
      if (rng() % 2 || m.expert_usage_size() == 0) m.clear_expert_usage();
      else m.mutable_expert_usage(0)->add_tokens(v);
      break;
    case 8:
      if (m.expert_usage_size() > 0 && m.expert_usage(0).tokens_size() > 0)
        m.mutable_expert_usage(0)->set_tokens(pick(m.expert_usage(0).tokens_size()), v);
      break;
    case 9: m.mutable_state()->set_optimizer_steps(v); break;
    case 10: m.mutable_state()->set_skipped_steps(v); break;
    case 11: m.mutable_state()->add_moe_layer_calls(static_cast<uint64_t>(v)); break;
    case 12: {  // the stored config: cut, or a character changed
      std::string c = m.config_yaml();
      if (c.empty()) break;
      const size_t at = static_cast<size_t>(rng() % c.size());
      if (rng() % 2) c.resize(at);
      else c[at] = static_cast<char>('!' + rng() % 94);  // printable: proto3 strings must be UTF-8
      m.set_config_yaml(c);
      break;
    }
    case 13: {  // an entry removed, or repeated
      if (m.tensors_size() == 0) break;
      const int i = pick(m.tensors_size());
      if (rng() % 2) m.mutable_tensors()->erase(m.mutable_tensors()->begin() + i);
      else *m.add_tensors() = m.tensors(i);
      break;
    }
    default: {  // one field of an entry, in the manifest and in its index alike
      if (m.tensors_size() == 0) break;
      const int i = pick(m.tensors_size());
      checkpoint::TensorEntry before = m.tensors(i);
      mutate_entry(*m.mutable_tensors(i), choice / 16, v);
      for (checkpoint::ShardIndex& index : indexes)
        for (checkpoint::TensorEntry& e : *index.mutable_tensors())
          if (e.SerializeAsString() == before.SerializeAsString()) e = m.tensors(i);
      if (choice % 16 == 15 && m.shards_size() == 2)  // and the shard's size made to agree with it, to get past that check
        m.mutable_shards(before.file() == "shard_00000.bin" ? 0 : 1)
            ->set_bytes(m.tensors(i).offset() + m.tensors(i).length());
      break;
    }
  }
}

TEST_F(CheckpointHostile, FuzzedCheckpointsAreRefusedOrLoadedCleanly) {
  const std::vector<std::string> files = {"MANIFEST", "shard_00000.index", "shard_00001.index", "shard_00000.bin",
                                          "shard_00001.bin"};
  const std::string dir = tmp_.path() + "/fuzzed";
  std::mt19937_64 rng(20240611);
  int refused = 0, loaded = 0;
  for (int iteration = 0; iteration < 400; ++iteration) {
    SCOPED_TRACE("iteration " + std::to_string(iteration));
    copy_to(dir);
    const std::string victim = dir + "/" + files[rng() % files.size()];
    std::string bytes = read_whole(victim);
    switch (rng() % 4) {
      case 0:  // flipped bits
        for (int n = 0; n < 1 + static_cast<int>(rng() % 3) && !bytes.empty(); ++n)
          bytes[rng() % bytes.size()] ^= static_cast<char>(1 << (rng() % 8));
        write_whole(victim, bytes);
        break;
      case 1:  // truncated, or grown
        if (rng() % 2) bytes.resize(rng() % (bytes.size() + 1));
        else bytes += std::string(1 + rng() % 70, static_cast<char>(rng()));
        write_whole(victim, bytes);
        break;
      default: {  // fields changed, sealed again with correct CRCs
        checkpoint::Manifest m;
        std::vector<checkpoint::ShardIndex> indexes(2);
        ASSERT_TRUE(read_metadata_message(dir + "/MANIFEST", &m));
        for (int r = 0; r < 2; ++r)
          ASSERT_TRUE(read_metadata_message(dir + "/" + checkpoint_shard_file(r, "index"), &indexes[r]));
        for (int n = 0; n < 1 + static_cast<int>(rng() % 2); ++n) mutate_manifest(m, indexes, rng);
        write_metadata_message(dir + "/MANIFEST", m);
        for (int r = 0; r < 2; ++r) write_metadata_message(dir + "/" + checkpoint_shard_file(r, "index"), indexes[r]);
        break;
      }
    }
    (load_everything(dir, pristine_).empty() ? loaded : refused) += 1;
    if (HasFailure()) break;  // one iteration's report is enough
  }
  EXPECT_GT(refused, 300) << "the mutations should mostly be caught";
  std::printf("fuzz: %d refused, %d loaded\n", refused, loaded);
}

}  // namespace
}  // namespace moe::ckpt
