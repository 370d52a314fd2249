// Tests of checkpoint files (core/checkpoint/checkpoint.h), run at 1 and 2 ranks: a save/read round trip
// of every kind of tensor from every rank, keep-K pruning and `latest`, refusing to overwrite a complete
// checkpoint, listing beside incomplete directories, each kind of damage reported by a Status naming
// the file and the problem (the files are never modified by reading), and a checkpoint over 2 GB.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "parallel/checkpoint_save.h"
#include "core/crc32c.h"
#include "core/random.h"
#include "tests/checkpoint_test_util.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

namespace fs = std::filesystem;

// A fresh directory under the system's temporary directory, shared by all ranks (rank 0 makes it and
// sends its name), removed once every rank is done with it.
class SharedTempDir {
 public:
  explicit SharedTempDir(Communicator& world) : world_(world) {
    char name[1024] = {};
    if (world.rank() == 0) {
      std::string pattern = (fs::temp_directory_path() / "moe_test_checkpoint_XXXXXX").string();
      if (::mkdtemp(pattern.data()) != nullptr) std::snprintf(name, sizeof name, "%s", pattern.c_str());
    }
    world.broadcast(name, sizeof name, 0);
    path_ = name;
  }
  ~SharedTempDir() {
    world_.barrier();  // no rank still reads what rank 0 is about to remove
    std::error_code ec;
    if (world_.rank() == 0 && !path_.empty()) fs::remove_all(path_, ec);
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  Communicator& world_;
  std::string path_;
};

std::string shard_file(int rank, const char* ext) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "shard_%05d.%s", rank, ext);
  return buf;
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string hex8(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

// --- deterministic tensors: element i of (name, expert) under `salt` is computable on every rank ---

struct Spec {
  std::string name;
  int64_t expert;
  Shape shape;
  DType dtype;
};

uint64_t key_of(const Spec& s, uint64_t salt) { return stream_id(salt, s.name) ^ mix64(static_cast<uint64_t>(s.expert + 7)); }

uint64_t pattern_bits(uint64_t key, int64_t i) { return mix64(key ^ mix64(static_cast<uint64_t>(i))); }
// Multiples of 1/1024 in [-977, 977]: exact in float32, with varied bytes.
float pattern_f32(uint64_t key, int64_t i) {
  return static_cast<float>(static_cast<int64_t>(pattern_bits(key, i) % 2000001) - 1000000) / 1024.0f;
}

void fill_pattern(Tensor& t, uint64_t key, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    if (t.dtype() == DType::F32) t.f32()[i] = pattern_f32(key, i);
    else t.i32()[i] = static_cast<int32_t>(static_cast<uint32_t>(pattern_bits(key, i)));
  }
}

Tensor expected_tensor(const Spec& s, uint64_t salt) {
  Tensor t = Tensor::empty(s.shape, s.dtype);
  fill_pattern(t, key_of(s, salt), 0, t.numel());
  return t;
}

const void* bytes_of(const Tensor& t) {
  return t.dtype() == DType::F32 ? static_cast<const void*>(t.f32()) : static_cast<const void*>(t.i32());
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(bytes_of(a), bytes_of(b), static_cast<size_t>(a.numel()) * 4) == 0;
}

// What rank r writes in the round-trip test: float32 and int32 tensors of several shapes, scalars and
// empty ones (odd byte counts exercise the 64-byte padding), and experts 2r and 2r+1 of two stacked
// expert tensors (slices are views into a stacked tensor, as the trainer writes them).
std::vector<Spec> round_trip_specs(int r) {
  const std::string p = ".r" + std::to_string(r);
  std::vector<Spec> specs = {
      {"dense.scalar" + p, -1, {}, DType::F32},        {"dense.vec" + p, -1, {5}, DType::F32},
      {"dense.mat" + p, -1, {3, 7}, DType::F32},       {"dense.cube" + p, -1, {2, 3, 4}, DType::F32},
      {"dense.empty" + p, -1, {0}, DType::F32},        {"dense.empty3" + p, -1, {4, 0, 3}, DType::F32},
      {"ints.vec" + p, -1, {6}, DType::I32},           {"ints.mat" + p, -1, {2, 2}, DType::I32},
      {"ints.empty" + p, -1, {0}, DType::I32},
  };
  for (int64_t e = 2 * r; e < 2 * r + 2; ++e) {
    specs.push_back({"layers.0.moe.w_in", e, {3, 5}, DType::F32});
    specs.push_back({"adamw.m.layers.0.moe.w_in", e, {3, 5}, DType::F32});
  }
  return specs;
}

// The tensors of `specs`; expert slices of one name are views into one stacked (experts, ...) tensor.
std::vector<CheckpointTensor> make_tensors(const std::vector<Spec>& specs, uint64_t salt) {
  std::vector<CheckpointTensor> out;
  std::map<std::string, std::vector<const Spec*>> experts_of;
  for (const Spec& s : specs) {
    if (s.expert < 0) out.push_back({s.name, -1, expected_tensor(s, salt)});
    else experts_of[s.name].push_back(&s);
  }
  for (auto& [name, list] : experts_of) {
    Shape stacked_shape = list[0]->shape;
    stacked_shape.insert(stacked_shape.begin(), static_cast<int64_t>(list.size()));
    Tensor stacked = Tensor::empty(stacked_shape);
    for (size_t i = 0; i < list.size(); ++i) {
      Tensor slice = stacked.rows(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1).reshape(list[i]->shape);
      fill_pattern(slice, key_of(*list[i], salt), 0, slice.numel());
      out.push_back({name, list[i]->expert, slice});
    }
  }
  return out;
}

SaveRequest make_request(const std::string& root, int64_t step, const std::string& run_id, int keep, int world_size) {
  SaveRequest req;
  req.root = root;
  req.step = step;
  req.keep = keep;
  checkpoint::Manifest& h = req.header;
  h.set_run_id(run_id);
  h.set_config_yaml("model:\n  d_model: 8\n");
  h.mutable_layout()->set_world_size(world_size);
  h.mutable_layout()->set_ep(world_size);
  h.mutable_layout()->set_num_experts(2 * world_size);
  h.mutable_layout()->set_experts_per_rank(2);
  h.mutable_layout()->set_placement("test placement");
  checkpoint::TrainingState* s = h.mutable_state();
  s->set_optimizer_steps(step);
  s->set_loader_epoch(3);
  s->set_loader_sequences_done(48);
  s->add_moe_layer_calls(step);
  s->add_moe_layer_calls(step + 1);
  s->set_skipped_steps(1);
  s->set_consecutive_nonfinite(0);
  s->add_sums(0.5);
  s->add_sums(-1.25);
  s->add_counters(7);
  for (int layer = 0; layer < 2; ++layer) {  // one per MoE layer, like moe_layer_calls
    checkpoint::ExpertUsage* u = h.add_expert_usage();
    u->set_layer(layer);
    for (int e = 0; e < 2 * world_size; ++e) u->add_tokens(10 * e + 1 + layer);
  }
  return req;
}

checkpoint::RankState rank_state_of(int rank) {
  checkpoint::RankState rs;
  rs.add_counters(rank);
  rs.add_counters(100 + rank);
  rs.add_sums(0.5 * rank);
  return rs;
}

// A small checkpoint: every rank writes "a.r<rank>" (100 floats), "b.r<rank>" (10 x 10), "c.r<rank>"
// (7 int32) and experts 2r and 2r+1 of "w" (4 x 3). Collective. Returns the checkpoint directory.
std::vector<Spec> small_specs(int r) {
  const std::string p = ".r" + std::to_string(r);
  return {{"a" + p, -1, {100}, DType::F32},
          {"b" + p, -1, {10, 10}, DType::F32},
          {"c" + p, -1, {7}, DType::I32},
          {"w", 2 * r, {4, 3}, DType::F32},
          {"w", 2 * r + 1, {4, 3}, DType::F32}};
}

std::string save_small(Communicator& world, const std::string& root, int64_t step, const std::string& run_id,
                       uint64_t salt, int keep = 0) {
  return save_checkpoint(make_request(root, step, run_id, keep, world.size()),
                         make_tensors(small_specs(world.rank()), salt), rank_state_of(world.rank()), world);
}

// --- files ---

std::string read_range(const std::string& path, uint64_t offset, uint64_t length) {
  std::string out(length, '\0');
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  const ssize_t r = length ? ::pread(fd, out.data(), length, static_cast<off_t>(offset)) : 0;
  ::close(fd);
  return r == static_cast<ssize_t>(length) ? out : "";
}

// Every regular file under root: size, modification time (ns) and CRC32C of its contents.
using FileFacts = std::tuple<uintmax_t, int64_t, uint32_t>;
std::map<std::string, FileFacts> snapshot(const std::string& root) {
  std::map<std::string, FileFacts> out;
  std::error_code ec;
  for (const auto& f : fs::recursive_directory_iterator(root, ec)) {
    if (!f.is_regular_file()) continue;
    struct stat st = {};
    ::stat(f.path().c_str(), &st);
    const std::string bytes = read_whole(f.path().string());
    out[fs::relative(f.path(), root).string()] = {static_cast<uintmax_t>(st.st_size),
                                                  st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec,
                                                  crc32c(bytes.data(), bytes.size())};
  }
  return out;
}

Status open_status(const std::string& dir) {
  std::unique_ptr<CheckpointReader> reader;
  return CheckpointReader::open(dir, &reader);
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& f : fs::directory_iterator(dir, ec)) out.push_back(f.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// --- round trip ---

TEST(Checkpoint, RoundTripOfEveryRanksTensors) {
  Communicator& world = test_world();
  const int W = world.size();
  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const std::string root = tmp.path() + "/ckpt";  // created by the save
  const uint64_t salt = 11;
  const SaveRequest req = make_request(root, 7, "run-roundtrip", 0, W);
  const std::string dir = save_checkpoint(req, make_tensors(round_trip_specs(world.rank()), salt),
                                          rank_state_of(world.rank()), world);
  EXPECT_EQ(dir, root + "/" + step_name(7));
  EXPECT_EQ(read_whole(root + "/latest"), step_name(7) + "\n");

  // Exactly the manifest and one shard file and index per rank: no temporary files left behind.
  std::vector<std::string> expected_files = {"MANIFEST"};
  for (int r = 0; r < W; ++r) {
    expected_files.push_back(shard_file(r, "bin"));
    expected_files.push_back(shard_file(r, "index"));
  }
  std::sort(expected_files.begin(), expected_files.end());
  EXPECT_EQ(names_in(dir), expected_files);

  std::unique_ptr<CheckpointReader> reader;
  Status st = CheckpointReader::open(dir, &reader);
  ASSERT_TRUE(st.ok()) << st.to_string();  // every rank reads the same files: same verdict everywhere
  const checkpoint::Manifest& m = reader->manifest();
  EXPECT_EQ(m.format_version(), kCheckpointFormatVersion);
  EXPECT_EQ(m.run_id(), "run-roundtrip");
  EXPECT_EQ(m.step(), 7);
  EXPECT_EQ(m.config_yaml(), req.header.config_yaml());
  EXPECT_EQ(m.layout().SerializeAsString(), req.header.layout().SerializeAsString());
  EXPECT_EQ(m.state().SerializeAsString(), req.header.state().SerializeAsString());
  ASSERT_EQ(m.expert_usage_size(), 2);
  EXPECT_EQ(m.expert_usage(1).SerializeAsString(), req.header.expert_usage(1).SerializeAsString());

  // Shards and rank states: one per rank, in rank order, with the files' real sizes.
  ASSERT_EQ(m.shards_size(), W);
  ASSERT_EQ(m.rank_states_size(), W);
  for (int r = 0; r < W; ++r) {
    EXPECT_EQ(m.shards(r).rank(), r);
    EXPECT_EQ(m.shards(r).file(), shard_file(r, "bin"));
    EXPECT_EQ(m.shards(r).bytes(), fs::file_size(dir + "/" + shard_file(r, "bin")));
    EXPECT_EQ(m.rank_states(r).rank(), r);
    checkpoint::RankState want = rank_state_of(r);
    want.set_rank(r);
    EXPECT_EQ(m.rank_states(r).SerializeAsString(), want.SerializeAsString()) << "rank " << r;
    checkpoint::ShardIndex index;
    ASSERT_TRUE(read_metadata_message(dir + "/" + shard_file(r, "index"), &index));
    EXPECT_EQ(index.run_id(), "run-roundtrip");
    EXPECT_EQ(index.step(), 7);
    EXPECT_EQ(index.rank(), r);
    EXPECT_EQ(index.file_bytes(), m.shards(r).bytes());
  }

  // Every rank's tensors, checked on every rank: entry fields, the raw bytes at the recorded place in
  // the recorded file (independently of the reader), and the reader's result.
  size_t total = 0;
  for (int r = 0; r < W; ++r) {
    const std::vector<Spec> specs = round_trip_specs(r);
    total += specs.size();
    std::vector<std::pair<uint64_t, uint64_t>> extents;
    for (const Spec& s : specs) {
      SCOPED_TRACE("tensor '" + s.name + "' expert " + std::to_string(s.expert) + " of rank " + std::to_string(r));
      const Tensor want = expected_tensor(s, salt);
      const checkpoint::TensorEntry* e = reader->find(s.name, s.expert);
      ASSERT_NE(e, nullptr);
      EXPECT_EQ(Shape(e->shape().begin(), e->shape().end()), s.shape);
      EXPECT_EQ(e->dtype(), to_string(s.dtype));
      EXPECT_EQ(e->file(), shard_file(r, "bin"));
      EXPECT_EQ(e->offset() % 64, 0u) << "offset " << e->offset();
      EXPECT_EQ(e->length(), static_cast<uint64_t>(want.numel()) * 4);
      EXPECT_EQ(e->crc32c(), crc32c(bytes_of(want), e->length()));
      const std::string raw = read_range(dir + "/" + e->file(), e->offset(), e->length());
      ASSERT_EQ(raw.size(), e->length());
      EXPECT_EQ(std::memcmp(raw.data(), bytes_of(want), raw.size()), 0);
      Tensor got = Tensor::empty(s.shape, s.dtype);
      Status rs = reader->read(*e, got);
      EXPECT_TRUE(rs.ok()) << rs.to_string();
      EXPECT_TRUE(same_bytes(got, want));
      extents.push_back({e->offset(), e->offset() + e->length()});
    }
    std::sort(extents.begin(), extents.end());
    for (size_t i = 1; i < extents.size(); ++i)
      EXPECT_LE(extents[i - 1].second, extents[i].first) << "entries overlap in " << shard_file(r, "bin");
  }
  EXPECT_EQ(static_cast<size_t>(m.tensors_size()), total);
  EXPECT_TRUE(reader->verify().empty());
}

// --- keep, latest, existing steps, listing ---

TEST(Checkpoint, KeepDeletesOnlyOlderCompleteCheckpointsAndLatestNamesTheNewest) {
  Communicator& world = test_world();
  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const std::string root = tmp.path();
  // Incomplete directories (a crash before the manifest), older and newer than the saves below.
  if (world.rank() == 0) {
    for (int64_t step : {0, 15, 99}) fs::create_directories(root + "/" + step_name(step));
    write_whole(root + "/" + step_name(0) + "/shard_00000.bin", "partial");
    write_whole(root + "/" + step_name(99) + "/shard_00000.bin.tmp", "partial");
  }
  world.barrier();
  const auto incomplete_before = snapshot(root);
  world.barrier();  // before any rank starts writing step 10 into what the others are still listing

  for (int64_t step : {10, 20, 30}) {
    const std::string dir = save_small(world, root, step, "run-keep", static_cast<uint64_t>(step), /*keep=*/2);
    EXPECT_EQ(read_whole(root + "/latest"), step_name(step) + "\n") << "after saving step " << step;
    EXPECT_TRUE(fs::exists(dir + "/MANIFEST"));
  }
  std::vector<int64_t> complete, incomplete;
  for (const CheckpointListing& c : list_checkpoints(root)) (c.complete ? complete : incomplete).push_back(c.step);
  EXPECT_EQ(complete, (std::vector<int64_t>{20, 30}));
  EXPECT_EQ(incomplete, (std::vector<int64_t>{0, 15, 99}));
  EXPECT_FALSE(fs::exists(root + "/" + step_name(10)));
  // The incomplete directories are exactly as they were.
  auto now = snapshot(root);
  for (const auto& [path, facts] : incomplete_before) {
    ASSERT_TRUE(now.count(path)) << path << " was deleted";
    EXPECT_EQ(now[path], facts) << path << " was modified";
  }
  EXPECT_EQ(newest_complete_checkpoint(root), root + "/" + step_name(30));
}

TEST(Checkpoint, SavingAStepWhoseCompleteCheckpointExistsFailsOnEveryRankAndLeavesItAlone) {
  Communicator& world = test_world();
  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const std::string dir = save_small(world, tmp.path(), 5, "run-first", 1);
  const auto before = snapshot(tmp.path());
  const std::string message = error_message([&] { save_small(world, tmp.path(), 5, "run-second", 2); });
  EXPECT_CONTAINS(message, "a complete checkpoint for step 5 already exists", dir);
  world.barrier();
  EXPECT_EQ(snapshot(tmp.path()), before) << "the failed save modified the existing checkpoint";
  std::unique_ptr<CheckpointReader> reader;
  Status st = CheckpointReader::open(dir, &reader);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(reader->manifest().run_id(), "run-first");
  EXPECT_TRUE(reader->verify().empty());
}

TEST(Checkpoint, SavingOverAnIncompleteDirectoryOfTheSameStepCompletesIt) {
  // What a resumed run does after a crash during a save: it reaches the same step and saves again.
  Communicator& world = test_world();
  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const std::string dir = tmp.path() + "/" + step_name(20);
  if (world.rank() == 0) {
    fs::create_directories(dir);
    write_whole(dir + "/shard_00000.bin", "stale bytes of a crashed save");
    write_whole(dir + "/shard_00000.index", "stale index");
    write_whole(dir + "/" + shard_file(world.size() - 1, "bin") + ".tmp", "half a shard");
  }
  world.barrier();
  EXPECT_EQ(save_small(world, tmp.path(), 20, "run-again", 3), dir);
  std::unique_ptr<CheckpointReader> reader;
  Status st = CheckpointReader::open(dir, &reader);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_TRUE(reader->verify().empty());
  EXPECT_EQ(reader->manifest().run_id(), "run-again");
  const checkpoint::TensorEntry* e = reader->find("a.r0");
  ASSERT_NE(e, nullptr);
  Tensor got = Tensor::empty({100});
  EXPECT_TRUE(reader->read(*e, got).ok());
  EXPECT_TRUE(same_bytes(got, expected_tensor(small_specs(0)[0], 3)));
}

TEST(Checkpoint, ListingReportsIncompleteDirectoriesAndNewestCompleteSkipsThem) {
  Communicator& world = test_world();
  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const std::string root = tmp.path() + "/ckpt";
  EXPECT_TRUE(list_checkpoints(root).empty()) << "a missing root lists nothing";
  EXPECT_EQ(newest_complete_checkpoint(root), "");
  world.barrier();  // every rank has looked before any creates root

  save_small(world, root, 3, "run-list", 1);
  if (world.rank() == 0) {
    fs::create_directories(root + "/" + step_name(7));  // newer, but no MANIFEST
    write_whole(root + "/" + step_name(7) + "/shard_00000.bin", "0123456789");
    fs::create_directories(root + "/step_abc");       // not step directories: ignored
    fs::create_directories(root + "/step_123");
    fs::create_directories(root + "/notes");
    write_whole(root + "/" + step_name(9), "a file, not a directory");
  }
  world.barrier();
  const std::vector<CheckpointListing> all = list_checkpoints(root);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].step, 3);
  EXPECT_TRUE(all[0].complete) << all[0].problem;
  EXPECT_EQ(all[0].dir, root + "/" + step_name(3));
  uintmax_t bytes = 0;
  for (const auto& f : fs::directory_iterator(all[0].dir)) bytes += f.file_size();
  EXPECT_EQ(all[0].bytes, bytes);
  EXPECT_EQ(all[1].step, 7);
  EXPECT_FALSE(all[1].complete);
  EXPECT_EQ(all[1].bytes, 10u);
  EXPECT_CONTAINS(all[1].problem, root + "/" + step_name(7) + "/MANIFEST");
  EXPECT_CONTAINS(all[1].problem, "incomplete");
  EXPECT_EQ(newest_complete_checkpoint(root), root + "/" + step_name(3));
}

// --- damage: every case names the file and the problem, and reading never modifies the files ---

// Saves a small checkpoint (step 5 of run "run-a"), lets rank 0 damage it, then runs `check` on every
// rank and checks that the files are unchanged by it.
void with_damaged_checkpoint(const std::function<void(const std::string& dir)>& damage,
                             const std::function<void(const std::string& dir)>& check) {
  Communicator& world = test_world();
  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const std::string dir = save_small(world, tmp.path(), 5, "run-a", 1);
  if (world.rank() == 0) damage(dir);
  world.barrier();
  const auto before = snapshot(tmp.path());
  check(dir);
  EXPECT_EQ(snapshot(tmp.path()), before) << "reading the damaged checkpoint modified its files";
}

TEST(CheckpointDamage, TruncatedShard) {
  const std::string victim = shard_file(test_world().size() - 1, "bin");
  with_damaged_checkpoint(
      [&](const std::string& dir) {
        const std::string path = dir + "/" + victim;
        ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(fs::file_size(path) - 10)), 0);
      },
      [&](const std::string& dir) {
        Status s = open_status(dir);
        EXPECT_EQ(s.code(), Status::Code::Corruption) << s.to_string();
        EXPECT_CONTAINS(s.message(), "'" + dir + "/" + victim + "'");
        EXPECT_CONTAINS(s.message(), "truncated");
        // A damaged checkpoint is not complete: never resumed from, never pruned.
        const auto all = list_checkpoints(fs::path(dir).parent_path().string());
        ASSERT_EQ(all.size(), 1u);
        EXPECT_FALSE(all[0].complete);
        EXPECT_CONTAINS(all[0].problem, victim);
        EXPECT_EQ(newest_complete_checkpoint(fs::path(dir).parent_path().string()), "");
      });
}

TEST(CheckpointDamage, FlippedBytesAreFoundByReadAndVerify) {
  const int last = test_world().size() - 1;
  const std::string dense = "b.r" + std::to_string(last);
  const int64_t expert = 2 * last + 1;
  // Flips one bit of byte 13 of the dense tensor and of byte 5 of the expert slice.
  auto flip = [](const std::string& path, uint64_t at) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << path;
    char c = 0;
    ASSERT_EQ(::pread(fd, &c, 1, static_cast<off_t>(at)), 1);
    c = static_cast<char>(c ^ 0x10);
    ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(at)), 1);
    ::close(fd);
  };
  with_damaged_checkpoint(
      [&](const std::string& dir) {
        std::unique_ptr<CheckpointReader> reader;
        ASSERT_TRUE(CheckpointReader::open(dir, &reader).ok());
        const checkpoint::TensorEntry* d = reader->find(dense);
        const checkpoint::TensorEntry* x = reader->find("w", expert);
        ASSERT_TRUE(d != nullptr && x != nullptr);
        flip(dir + "/" + d->file(), d->offset() + 13);
        flip(dir + "/" + x->file(), x->offset() + 5);
      },
      [&](const std::string& dir) {
        std::unique_ptr<CheckpointReader> reader;
        Status s = CheckpointReader::open(dir, &reader);
        ASSERT_TRUE(s.ok()) << "sizes are unchanged, so open succeeds: " << s.to_string();
        std::vector<std::string> expected_lines;
        for (const checkpoint::TensorEntry* e : {reader->find(dense), reader->find("w", expert)}) {
          ASSERT_NE(e, nullptr);
          const std::string path = dir + "/" + e->file();
          const std::string raw = read_range(path, e->offset(), e->length());
          const uint32_t found = crc32c(raw.data(), raw.size());
          std::vector<char> out(e->length());
          Status rs = reader->read(*e, out.data());
          EXPECT_EQ(rs.code(), Status::Code::Corruption) << rs.to_string();
          EXPECT_CONTAINS(rs.message(), "tensor '" + e->name() + "'");
          EXPECT_CONTAINS(rs.message(), "'" + path + "'");
          EXPECT_CONTAINS(rs.message(), "CRC32C " + hex8(found) + ", the manifest says " + hex8(e->crc32c()));
          if (e->expert() >= 0) {
            EXPECT_CONTAINS(rs.message(), "(expert " + std::to_string(expert) + ")");
          }
          expected_lines.push_back(rs.to_string());
        }
        // verify() reports exactly the two damaged tensors, with the same messages; the rest reads fine.
        EXPECT_EQ(reader->verify(), expected_lines);
        const checkpoint::TensorEntry* fine = reader->find("a.r" + std::to_string(last));
        ASSERT_NE(fine, nullptr);
        Tensor got = Tensor::empty({100});
        EXPECT_TRUE(reader->read(*fine, got).ok());
      });
}

TEST(CheckpointDamage, MissingShard) {
  const std::string victim = shard_file(test_world().size() - 1, "bin");
  with_damaged_checkpoint([&](const std::string& dir) { fs::remove(dir + "/" + victim); },
                          [&](const std::string& dir) {
                            Status s = open_status(dir);
                            EXPECT_EQ(s.code(), Status::Code::NotFound) << s.to_string();
                            EXPECT_CONTAINS(s.message(), "shard file '" + dir + "/" + victim + "' is missing");
                          });
}

TEST(CheckpointDamage, MissingShardIndex) {
  const std::string victim = shard_file(test_world().size() - 1, "index");
  with_damaged_checkpoint([&](const std::string& dir) { fs::remove(dir + "/" + victim); },
                          [&](const std::string& dir) {
                            Status s = open_status(dir);
                            EXPECT_EQ(s.code(), Status::Code::Corruption) << s.to_string();
                            EXPECT_CONTAINS(s.message(), "'" + dir + "/" + victim + "' is missing or unreadable");
                          });
}

TEST(CheckpointDamage, ShardIndexDisagreeingWithTheManifestIsRefusedByOpen) {
  // Sealed again with a correct CRC: the comparison with the manifest, not the checksum, finds it.
  const std::string victim = shard_file(test_world().size() - 1, "index");
  with_damaged_checkpoint(
      [&](const std::string& dir) {
        checkpoint::ShardIndex index;
        ASSERT_TRUE(read_metadata_message(dir + "/" + victim, &index));
        ASSERT_GT(index.tensors_size(), 0);
        index.mutable_tensors(0)->set_crc32c(index.tensors(0).crc32c() ^ 1);
        write_metadata_message(dir + "/" + victim, index);
      },
      [&](const std::string& dir) {
        Status s = open_status(dir);
        EXPECT_EQ(s.code(), Status::Code::Corruption) << s.to_string();
        EXPECT_CONTAINS(s.message(), "'" + dir + "/" + victim + "' disagrees with '" + dir + "/MANIFEST': tensors[0]");
      });
}

// Every byte of the metadata is under a checksum: one flipped bit anywhere in MANIFEST or an index
// (the stored config, the training state, a rank's state) is refused by open, naming the file.
TEST(CheckpointDamage, FlippedMetadataBytesAreRefusedByOpen) {
  const std::string index = shard_file(test_world().size() - 1, "index");
  for (const std::string& victim : {std::string("MANIFEST"), index}) {
    for (int part = 0; part < 8; ++part) {
      SCOPED_TRACE(victim + " byte " + std::to_string(part) + "/8");
      with_damaged_checkpoint(
          [&](const std::string& dir) {
            std::string bytes = read_whole(dir + "/" + victim);
            bytes[bytes.size() * part / 8] ^= 0x04;
            write_whole(dir + "/" + victim, bytes);
          },
          [&](const std::string& dir) {
            Status s = open_status(dir);
            EXPECT_FALSE(s.ok());
            EXPECT_CONTAINS(s.message(), "'" + dir + "/" + victim + "'");
          });
    }
  }
}

// Format version 1 (no seals) is still read: a version-2 checkpoint unsealed into version-1 files.
TEST(CheckpointDamage, VersionOneCheckpointsAreStillRead) {
  with_damaged_checkpoint(
      [&](const std::string& dir) {
        checkpoint::Manifest m;
        ASSERT_TRUE(read_metadata_message(dir + "/MANIFEST", &m));
        m.set_format_version(1);
        write_whole(dir + "/MANIFEST", m.SerializeAsString());
        for (const auto& shard : m.shards()) {
          checkpoint::ShardIndex index;
          const std::string path = dir + "/" + shard_file(shard.rank(), "index");
          ASSERT_TRUE(read_metadata_message(path, &index));
          write_whole(path, index.SerializeAsString());
        }
      },
      [&](const std::string& dir) {
        std::unique_ptr<CheckpointReader> reader;
        Status s = CheckpointReader::open(dir, &reader);
        ASSERT_TRUE(s.ok()) << s.to_string();
        EXPECT_EQ(reader->manifest().format_version(), 1u);
        EXPECT_TRUE(reader->verify().empty());
      });
}

TEST(CheckpointDamage, MissingManifestOrDirectory) {
  with_damaged_checkpoint([&](const std::string& dir) { fs::remove(dir + "/MANIFEST"); },
                          [&](const std::string& dir) {
                            Status s = open_status(dir);
                            EXPECT_EQ(s.code(), Status::Code::NotFound) << s.to_string();
                            EXPECT_CONTAINS(s.message(), "'" + dir + "/MANIFEST' is missing");
                            EXPECT_CONTAINS(s.message(), "incomplete");
                            const std::string nowhere = dir + "_does_not_exist";
                            s = open_status(nowhere);
                            EXPECT_EQ(s.code(), Status::Code::NotFound) << s.to_string();
                            EXPECT_CONTAINS(s.message(), "checkpoint directory '" + nowhere + "' does not exist");
                          });
}

TEST(CheckpointDamage, GarbageOrEmptyManifest) {
  // 0xff bytes start a varint tag that never ends: no protobuf parser accepts them.
  with_damaged_checkpoint(
      [&](const std::string& dir) { write_whole(dir + "/MANIFEST", std::string(16, '\xff') + "not a manifest"); },
      [&](const std::string& dir) {
        Status s = open_status(dir);
        EXPECT_EQ(s.code(), Status::Code::Corruption) << s.to_string();
        EXPECT_CONTAINS(s.message(), "'" + dir + "/MANIFEST' is not a checkpoint manifest");
      });
  with_damaged_checkpoint([&](const std::string& dir) { write_whole(dir + "/MANIFEST", ""); },
                          [&](const std::string& dir) {
                            Status s = open_status(dir);
                            EXPECT_EQ(s.code(), Status::Code::Corruption) << s.to_string();
                            EXPECT_CONTAINS(s.message(), "'" + dir + "/MANIFEST' is empty");
                          });
}

TEST(CheckpointDamage, ManifestFromAnotherRun) {
  // Two runs saved the same step with tensors of the same sizes; run B's directory gets run A's
  // MANIFEST. The sizes all match, so only the run ids tell them apart.
  Communicator& world = test_world();
  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const std::string dir_a = save_small(world, tmp.path() + "/a", 5, "run-a", 1);
  const std::string dir_b = save_small(world, tmp.path() + "/b", 5, "run-b", 2);
  if (world.rank() == 0) fs::copy_file(dir_a + "/MANIFEST", dir_b + "/MANIFEST", fs::copy_options::overwrite_existing);
  world.barrier();
  const auto before = snapshot(tmp.path());
  Status s = open_status(dir_b);
  EXPECT_EQ(s.code(), Status::Code::Corruption) << s.to_string();
  EXPECT_CONTAINS(s.message(), "'" + dir_b + "/shard_00000.index' belongs to run run-b step 5");
  EXPECT_CONTAINS(s.message(), "'" + dir_b + "/MANIFEST' to run run-a step 5");
  EXPECT_CONTAINS(s.message(), "another run");
  EXPECT_EQ(snapshot(tmp.path()), before);
}

TEST(CheckpointDamage, NewerFormatVersion) {
  const uint32_t newer = kCheckpointFormatVersion + 1;
  with_damaged_checkpoint(
      [&](const std::string& dir) {
        checkpoint::Manifest m;
        ASSERT_TRUE(read_metadata_message(dir + "/MANIFEST", &m));
        m.set_format_version(newer);
        write_metadata_message(dir + "/MANIFEST", m, newer);
      },
      [&](const std::string& dir) {
        Status s = open_status(dir);
        EXPECT_EQ(s.code(), Status::Code::NotSupported) << s.to_string();
        EXPECT_CONTAINS(s.message(), "'" + dir + "/MANIFEST' has format version " + std::to_string(newer));
        EXPECT_CONTAINS(s.message(), "this build reads versions 1 to " + std::to_string(kCheckpointFormatVersion));
      });
}

TEST(CheckpointDamage, ReadIntoATensorOfAnotherShapeOrDtypeNamesBoth) {
  with_damaged_checkpoint([](const std::string&) {},
                          [&](const std::string& dir) {
                            std::unique_ptr<CheckpointReader> reader;
                            ASSERT_TRUE(CheckpointReader::open(dir, &reader).ok());
                            const checkpoint::TensorEntry* e = reader->find("b.r0");
                            ASSERT_NE(e, nullptr);
                            Tensor wrong = Tensor::zeros({10, 11});
                            Status s = reader->read(*e, wrong);
                            EXPECT_EQ(s.code(), Status::Code::InvalidArgument) << s.to_string();
                            EXPECT_CONTAINS(s.message(), "tensor 'b.r0' has shape (10, 10)");
                            EXPECT_CONTAINS(s.message(), "but (10, 11) in this model");
                            for (int64_t i = 0; i < wrong.numel(); ++i) ASSERT_EQ(wrong.f32()[i], 0.0f) << "written to";
                            Tensor ints = Tensor::zeros({10, 10}, DType::I32);
                            s = reader->read(*e, ints);
                            EXPECT_EQ(s.code(), Status::Code::InvalidArgument) << s.to_string();
                            EXPECT_CONTAINS(s.message(), "dtype float32 in the checkpoint but int32");
                          });
}

// --- size: tensor bytes live outside the protobuf messages, so the 2 GB message limit does not matter ---

TEST(CheckpointLarge, MoreThanTwoGigabytesOfTensorData) {
  Communicator& world = test_world();
  // 550 M floats = 2.2e9 bytes: past 2^31 (signed 32-bit offsets and protobuf's limit) on rank 0.
  const int64_t rows = 55000, cols = 10000, n = rows * cols;
  const uint64_t need = 6ull << 30;  // the shard, the page cache's dirty copy on a tmpfs, and headroom
  int skip = 0;
  uint64_t available = 0;
  if (world.rank() == 0) {
    std::error_code ec;
    available = fs::space(fs::temp_directory_path(), ec).available;
    skip = ec || available < need ? 1 : 0;
  }
  world.broadcast(&skip, sizeof skip, 0);
  world.broadcast(&available, sizeof available, 0);
  if (skip)
    GTEST_SKIP() << "needs 6 GiB free in " << fs::temp_directory_path() << " for a 2.2 GB checkpoint; "
                 << (available >> 20) << " MiB free";

  SharedTempDir tmp(world);
  ASSERT_FALSE(tmp.path().empty()) << "cannot create a temporary directory";
  const uint64_t key = 0xb16;
  // Only pages at the start, middle and end are filled (a cheap pattern); the rest stays as allocated.
  // Whatever those bytes are, the CRC covers them all.
  const int64_t window = 4096, mid = n / 2;
  const std::vector<std::pair<int64_t, int64_t>> samples = {{0, window}, {mid - window, mid + window}, {n - window, n}};
  std::vector<CheckpointTensor> mine;
  Tensor after = Tensor::empty({1000});
  fill_pattern(after, key + 1, 0, after.numel());
  uint32_t big_crc = 0;
  if (world.rank() == 0) {
    Tensor big = Tensor::empty({rows, cols});
    for (auto [b, e] : samples) fill_pattern(big, key, b, e);
    big_crc = crc32c(big.f32(), static_cast<size_t>(n) * 4);
    mine.push_back({"big", -1, big});
    mine.push_back({"after_big", -1, after});  // its offset is past 2^31
  } else {
    mine.push_back({"small.r" + std::to_string(world.rank()), -1, after});
  }
  const std::string dir = save_checkpoint(make_request(tmp.path(), 1, "run-large", 0, world.size()), mine,
                                          rank_state_of(world.rank()), world);
  mine.clear();  // frees the 2.2 GB source before reading back

  std::unique_ptr<CheckpointReader> reader;
  Status st = CheckpointReader::open(dir, &reader);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_LT(fs::file_size(dir + "/MANIFEST"), 4096u) << "tensor bytes must not live in the manifest";
  if (world.rank() == 0) {
    const checkpoint::TensorEntry* e = reader->find("big");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->length(), static_cast<uint64_t>(n) * 4);
    EXPECT_EQ(e->crc32c(), big_crc);
    Tensor back = Tensor::empty({rows, cols});
    Status rs = reader->read(*e, back);  // checks the CRC of all 2.2 GB
    ASSERT_TRUE(rs.ok()) << rs.to_string();
    for (auto [b, end] : samples)
      for (int64_t i = b; i < end; ++i) ASSERT_EQ(back.f32()[i], pattern_f32(key, i)) << "element " << i;
    const checkpoint::TensorEntry* a = reader->find("after_big");
    ASSERT_NE(a, nullptr);
    EXPECT_GT(a->offset(), uint64_t{1} << 31);
    Tensor got = Tensor::empty({1000});
    EXPECT_TRUE(reader->read(*a, got).ok());
    EXPECT_TRUE(same_bytes(got, after));
  } else {
    const checkpoint::TensorEntry* e = reader->find("small.r" + std::to_string(world.rank()));
    ASSERT_NE(e, nullptr);
    Tensor got = Tensor::empty({1000});
    EXPECT_TRUE(reader->read(*e, got).ok());
    EXPECT_TRUE(same_bytes(got, after));
  }
}

}  // namespace
}  // namespace moe
