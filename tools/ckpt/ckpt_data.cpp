// Reading a checkpoint as whole tensors and writing tensors back as a checkpoint (tools/ckpt/ckpt_data.h).
#include "tools/ckpt/ckpt_data.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "core/check.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "core/parameter_names.h"

namespace fs = std::filesystem;

namespace moe::ckpt {

void check(const Status& status) {
  if (!status.ok()) throw CheckpointError(status.to_string());
}

std::string resolve_checkpoint(const std::string& path) {
  std::string dir;
  check(resolve_checkpoint_dir(path, &dir));
  if (dir != path) std::fprintf(stderr, "moe-ckpt: using %s, the newest complete checkpoint under %s\n", dir.c_str(),
                                checkpoint_root(path).c_str());
  return dir;
}

// ---- names ----

bool is_parameter(const std::string& name) {
  names::LayerTensorName n;
  return !is_optimizer_state(name) && !(names::parse_layer_tensor(name, &n) && n.leaf == names::kSelectionBias);
}

bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t ie = i, je = j;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      // Equal numbers may still differ in leading zeros: compare the values, then the text.
      const std::string x = a.substr(i, ie - i), y = b.substr(j, je - j);
      const size_t xs = x.find_first_not_of('0'), ys = y.find_first_not_of('0');
      const std::string xv = xs == std::string::npos ? "" : x.substr(xs),
                        yv = ys == std::string::npos ? "" : y.substr(ys);
      if (xv.size() != yv.size()) return xv.size() < yv.size();
      if (xv != yv) return xv < yv;
      if (x != y) return x < y;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

// ---- reading ----

std::vector<TensorInfo> list_tensors(const CheckpointReader& reader) {
  const checkpoint::Manifest& m = reader.manifest();
  const int64_t E = m.layout().num_experts();
  std::map<std::string, TensorInfo> by_name;
  for (const checkpoint::TensorEntry& e : m.tensors()) {
    TensorInfo& t = by_name[e.name()];
    if (t.parts.empty()) {
      t.name = e.name();
      t.expert = e.expert() >= 0;
      t.dtype = e.dtype() == "float32" ? DType::F32 : DType::I32;
      t.shape.assign(e.shape().begin(), e.shape().end());
      if (t.expert) {
        t.shape.insert(t.shape.begin(), E);
        t.parts.assign(static_cast<size_t>(E), nullptr);
      }
    }
    if (t.expert) t.parts[static_cast<size_t>(e.expert())] = &e;
    else t.parts.push_back(&e);
  }
  std::vector<TensorInfo> out;
  for (auto& [name, t] : by_name) out.push_back(std::move(t));
  std::sort(out.begin(), out.end(), [](const TensorInfo& a, const TensorInfo& b) { return natural_less(a.name, b.name); });
  return out;
}

Status read_tensor(const CheckpointReader& reader, const TensorInfo& info, Tensor* out) {
  Tensor t = Tensor::empty(info.shape, info.dtype);
  char* base = info.dtype == DType::F32 ? reinterpret_cast<char*>(t.f32()) : reinterpret_cast<char*>(t.i32());
  uint64_t at = 0;
  for (const checkpoint::TensorEntry* e : info.parts) {
    Status s = reader.read(*e, base + at);
    if (!s.ok()) return s;
    at += e->length();
  }
  MOE_ASSERT(at == static_cast<uint64_t>(t.numel()) * 4, "list_tensors checked every part's shape");
  *out = t;
  return Status::ok_status();
}

std::unique_ptr<CheckpointReader> open_checkpoint(const std::string& dir) {
  std::unique_ptr<CheckpointReader> reader;
  check(CheckpointReader::open(dir, &reader));
  return reader;
}

// ---- a checkpoint in memory ----

NamedTensor* CheckpointData::find(const std::string& name) {
  for (NamedTensor& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

void CheckpointData::remove(const std::string& name) {
  std::erase_if(tensors, [&](const NamedTensor& t) { return t.name == name; });
}

void CheckpointData::sort() {
  std::sort(tensors.begin(), tensors.end(),
            [](const NamedTensor& a, const NamedTensor& b) { return natural_less(a.name, b.name); });
}

TrainConfig parse_manifest_config(const checkpoint::Manifest& manifest, const std::string& dir) {
  try {
    return parse_train_config(manifest.config_yaml(), "'" + dir + "/MANIFEST' (config_yaml)");
  } catch (const InvalidArgument& e) {
    throw CheckpointError(std::string("the config recorded in the checkpoint does not parse: ") + e.what());
  }
}

CheckpointData load_checkpoint_data(const std::string& dir) {
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  CheckpointData data;
  data.dir = dir;
  data.header = reader->manifest();
  data.header.clear_tensors();
  data.header.clear_shards();
  data.header.clear_rank_states();
  data.config = parse_manifest_config(reader->manifest(), dir);
  if (data.config.moe.num_experts != data.header.layout().num_experts())
    throw CheckpointError("'" + dir +
                          "/MANIFEST' has layout.num_experts = " + std::to_string(data.header.layout().num_experts()) +
                          " but its config moe.num_experts = " + std::to_string(data.config.moe.num_experts));
  for (const TensorInfo& info : list_tensors(*reader)) {
    NamedTensor t{info.name, Tensor(), info.expert};
    check(read_tensor(*reader, info, &t.data));
    data.tensors.push_back(std::move(t));
  }
  return data;
}

// ---- writing ----

void require_new_output(const std::string& out) {
  std::error_code ec;
  MOE_REQUIRE(!fs::exists(fs::symlink_status(out, ec)), "'", out,
              "' already exists; moe-ckpt does not overwrite: remove it or choose another output");
}

PendingOutput::PendingOutput(const std::string& out) : out_(out) {
  require_new_output(out);
  std::string trimmed = out;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  out_ = trimmed;
  tmp_ = trimmed + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp_, ec);  // a leftover of an earlier process with this pid: ours by name
  if (!fs::create_directory(tmp_, ec) || ec)
    throw CheckpointError("cannot create '" + tmp_ + "': " + (ec ? ec.message() : "it exists"));
}

PendingOutput::~PendingOutput() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

namespace {

// fsync: the output's bytes are on disk before it gets its name.
void sync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw CheckpointError("cannot open '" + path + "': " + std::strerror(errno));
  const bool ok = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) throw CheckpointError("cannot fsync '" + path + "': " + std::strerror(err));
}

}  // namespace

void PendingOutput::commit() {
  MOE_ASSERT(!committed_, "commit once");
  for (const auto& f : fs::directory_iterator(tmp_))
    if (f.is_regular_file()) sync_path(f.path().string(), false);
  sync_path(tmp_, true);
  // RENAME_NOREPLACE: never replace an output that appeared while this one was being written.
  if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, out_.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    MOE_REQUIRE(err != EEXIST, "'", out_,
                "' appeared while moe-ckpt was writing; it is left as it is and the "
                "output is discarded");
    if (err == EINVAL || err == ENOSYS) {  // a file system without RENAME_NOREPLACE
      require_new_output(out_);
      if (::rename(tmp_.c_str(), out_.c_str()) != 0)
        throw CheckpointError("cannot rename '" + tmp_ + "' to '" + out_ + "': " + std::strerror(errno));
    } else {
      throw CheckpointError("cannot rename '" + tmp_ + "' to '" + out_ + "': " + std::strerror(err));
    }
  }
  committed_ = true;
}

void write_checkpoint_data(CheckpointData data, int world_size, int ep, const std::string& out) {
  MOE_REQUIRE(world_size >= 1, "world size ", world_size, " must be >= 1");
  MOE_REQUIRE(ep >= 1 && world_size % ep == 0, "ep = ", ep, " must divide the world size ", world_size);
  const int64_t E = data.config.moe.num_experts;
  MOE_REQUIRE(E % ep == 0, "num_experts = ", E, " is not divisible by ep = ", ep);
  data.config.parallel.ep = ep;
  // The source run's directories stay out of the new config: a run started from it writes under its
  // own run.dir (never into the source run's checkpoints, where keep-K would delete).
  data.config.run.dir.clear();
  data.config.checkpoint.dir.clear();
  data.config.checkpoint.init_from.clear();
  validate_for_world(data.config, world_size);
  const int64_t per_rank = E / ep;

  std::vector<std::vector<CheckpointTensor>> shards(static_cast<size_t>(world_size));
  std::vector<checkpoint::RankState> states(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) states[r].set_rank(r);
  int64_t whole_index = 0;
  for (const NamedTensor& t : data.tensors) {
    if (!t.expert) {
      // Like moe-train: each whole tensor written once, by ranks in turn.
      shards[whole_index++ % world_size].push_back({t.name, -1, t.data});
      continue;
    }
    MOE_REQUIRE(t.data.rank() >= 1 && t.data.dim(0) == E, "expert tensor '", t.name, "' has shape ",
                to_string(t.data.shape()), " but the config has num_experts = ", E);
    const Shape slice(t.data.shape().begin() + 1, t.data.shape().end());
    for (int64_t e = 0; e < E; ++e) shards[e / per_rank].push_back({t.name, e, t.data.rows(e, e + 1).reshape(slice)});
  }

  SaveRequest req;
  req.step = data.header.step();
  req.header = data.header;
  req.header.set_config_yaml(to_yaml(data.config));
  checkpoint::Layout* layout = req.header.mutable_layout();
  layout->set_world_size(world_size);
  layout->set_ep(ep);
  layout->set_num_experts(E);
  layout->set_experts_per_rank(per_rank);
  layout->set_placement("rank r holds experts [(r % ep) * E/ep, (r % ep + 1) * E/ep)");

  PendingOutput pending(out);
  check(write_checkpoint_directory(pending.tmp(), req, shards, states));
  open_checkpoint(pending.tmp());  // readable as a whole before it gets its name
  pending.commit();
}

// ---- tensor helpers ----

std::string layout_text(const checkpoint::Layout& l) {
  return "world size " + std::to_string(l.world_size()) + ", ep " + std::to_string(l.ep()) + ", " +
         std::to_string(l.num_experts()) + " experts, " + std::to_string(l.experts_per_rank()) + " per rank";
}

}  // namespace moe::ckpt
