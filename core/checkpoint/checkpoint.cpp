// Writing, listing, opening, reading and verifying checkpoints (core/checkpoint/checkpoint.h).
#include "core/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/check.h"
#include "core/checkpoint/manifest_check.h"
#include "core/checkpoint/metadata_file.h"
#include "core/crc32c.h"
#include "core/file_io.h"

namespace fs = std::filesystem;

namespace moe {

namespace {

constexpr uint64_t kAlign = 64;
constexpr const char* kManifest = "MANIFEST";

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Writes `bytes` to path atomically: path.tmp, fsync, rename. Ok or IOError.
Status write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return Status::io_error("cannot create '" + tmp + "': " + errno_text());
  bool ok = write_all(fd, bytes.data(), bytes.size()) && ::fsync(fd) == 0;
  Status err = ok ? Status::ok_status() : Status::io_error("cannot write '" + tmp + "': " + errno_text());
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0)
    err = Status::io_error("cannot rename '" + tmp + "': " + errno_text());
  if (!err.ok()) ::unlink(tmp.c_str());
  return err;
}

bool read_file(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return f.good() || f.eof();
}

// This rank's shard: the .bin file and its index. Ok or IOError.
Status write_shard(const std::string& dir, const SaveRequest& req, const std::vector<CheckpointTensor>& tensors,
                   const checkpoint::RankState& rank_state, int rank) {
  const std::string bin = checkpoint_shard_file(rank, "bin");
  const std::string tmp = dir + "/" + bin + ".tmp";
  int fd = ::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return Status::io_error("cannot create '" + tmp + "': " + errno_text());
  checkpoint::ShardIndex index;
  index.set_run_id(req.header.run_id());
  index.set_step(req.step);
  index.set_rank(rank);
  index.set_file(bin);
  *index.mutable_state() = rank_state;
  index.mutable_state()->set_rank(rank);
  uint64_t offset = 0;
  static const char zeros[kAlign] = {};
  Status err;
  for (const CheckpointTensor& t : tensors) {
    if (req.test_kill_midway && &t == &tensors[tensors.size() / 2]) std::raise(SIGKILL);
    MOE_ASSERT(t.data.device() == Device::CPU, "checkpoint tensors are on the CPU");
    const uint64_t pad = (kAlign - offset % kAlign) % kAlign;
    const uint64_t length = static_cast<uint64_t>(t.data.nbytes());
    const void* bytes = t.data.dtype() == DType::F32 ? static_cast<const void*>(t.data.f32())
                                                     : static_cast<const void*>(t.data.i32());
    if (!write_all(fd, zeros, pad) || !write_all(fd, bytes, length)) {
      err = Status::io_error("cannot write '" + tmp + "': " + errno_text());
      break;
    }
    offset += pad;
    checkpoint::TensorEntry* e = index.add_tensors();
    e->set_name(t.name);
    e->set_expert(t.expert);
    for (int64_t d : t.data.shape()) e->add_shape(d);
    e->set_dtype(to_string(t.data.dtype()));
    e->set_file(bin);
    e->set_offset(offset);
    e->set_length(length);
    e->set_crc32c(crc32c(bytes, length));
    offset += length;
  }
  if (err.ok() && ::fsync(fd) != 0) err = Status::io_error("cannot fsync '" + tmp + "': " + errno_text());
  ::close(fd);
  if (err.ok() && ::rename(tmp.c_str(), (dir + "/" + bin).c_str()) != 0)
    err = Status::io_error("cannot rename '" + tmp + "': " + errno_text());
  if (!err.ok()) {
    ::unlink(tmp.c_str());
    return err;
  }
  index.set_file_bytes(offset);
  return write_file_atomic(dir + "/" + checkpoint_shard_file(rank, "index"),
                           seal_metadata(index, kCheckpointFormatVersion));
}

// Rank 0, after every shard is in place: merges the indexes into the manifest. Ok, IOError, or the
// Corruption of check_manifest (nothing is written that a reader would refuse).
Status write_manifest(const std::string& dir, const SaveRequest& req, int world_size) {
  checkpoint::Manifest m = req.header;
  m.set_format_version(kCheckpointFormatVersion);
  m.set_step(req.step);
  m.clear_tensors();
  m.clear_shards();
  m.clear_rank_states();
  for (int r = 0; r < world_size; ++r) {
    const std::string path = dir + "/" + checkpoint_shard_file(r, "index");
    std::string bytes;
    checkpoint::ShardIndex index;
    uint32_t version = kCheckpointFormatVersion;
    if (!read_file(path, &bytes)) return Status::io_error("cannot read '" + path + "'");
    Status parsed = parse_metadata(path, bytes, "shard index", &version, &index);
    if (!parsed.ok()) return parsed;
    if (index.run_id() != m.run_id() || index.step() != req.step)
      return Status::io_error("'" + path + "' is from another save");
    for (const auto& e : index.tensors()) *m.add_tensors() = e;
    checkpoint::ShardInfo* s = m.add_shards();
    s->set_rank(r);
    s->set_file(index.file());
    s->set_bytes(index.file_bytes());
    *m.add_rank_states() = index.state();
  }
  const std::string path = dir + "/" + kManifest;
  Status err = check_manifest(m, kCheckpointFormatVersion, path);
  if (err.ok()) err = write_file_atomic(path, seal_metadata(m, kCheckpointFormatVersion));
  if (err.ok()) fsync_dir(dir);
  return err;
}

}  // namespace

std::string to_string_shape(const checkpoint::TensorEntry& e) {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < e.shape_size(); ++i) os << (i ? ", " : "") << e.shape(i);
  os << ")";
  return os.str();
}

std::string checkpoint_shard_file(int rank, const char* ext) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "shard_%05d.%s", rank, ext);
  return buf;
}

std::string checkpoint_step_dir(const std::string& root, int64_t step) { return root + "/" + step_dir_name(step); }

bool has_manifest(const std::string& dir) {
  std::error_code ec;
  return fs::exists(dir + "/" + kManifest, ec);
}

Status write_checkpoint_shard(const std::string& dir, const SaveRequest& req,
                              const std::vector<CheckpointTensor>& tensors, const checkpoint::RankState& rank_state,
                              int rank) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::io_error("cannot create '" + dir + "': " + ec.message());
  return write_shard(dir, req, tensors, rank_state, rank);
}

Status write_checkpoint_manifest(const std::string& dir, const SaveRequest& req, int world_size) {
  return write_manifest(dir, req, world_size);
}

Status publish_checkpoint(const SaveRequest& req) {
  fsync_dir(req.root);
  Status s = write_file_atomic(req.root + "/latest", step_dir_name(req.step) + "\n");
  if (!s.ok()) return s;
  if (req.keep > 0) {
    std::vector<CheckpointListing> complete;
    for (const auto& c : list_checkpoints(req.root))
      if (c.complete) complete.push_back(c);
    std::error_code ec;
    for (size_t i = 0; i + static_cast<size_t>(req.keep) < complete.size(); ++i) fs::remove_all(complete[i].dir, ec);
  }
  return Status::ok_status();
}

Status write_checkpoint_directory(const std::string& dir, const SaveRequest& req,
                                  const std::vector<std::vector<CheckpointTensor>>& per_rank,
                                  const std::vector<checkpoint::RankState>& rank_states) {
  MOE_ASSERT(per_rank.size() == rank_states.size() && !per_rank.empty(), "one tensor list and state per rank");
  if (has_manifest(dir))
    return Status::invalid_argument("a complete checkpoint already exists in '" + dir + "'; it is left as it is");
  // The same shard and manifest writers as the collective save_checkpoint, one rank after another.
  const int world_size = static_cast<int>(per_rank.size());
  for (int r = 0; r < world_size; ++r) {
    Status s = write_checkpoint_shard(dir, req, per_rank[r], rank_states[r], r);
    if (!s.ok()) return s;
  }
  return write_checkpoint_manifest(dir, req, world_size);
}

std::vector<CheckpointListing> list_checkpoints(const std::string& root) {
  std::vector<CheckpointListing> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind("step_", 0) != 0 || name.size() != 13 ||
        name.find_first_not_of("0123456789", 5) != std::string::npos)
      continue;
    CheckpointListing c = inspect_checkpoint(entry.path().string());
    c.step = std::stoll(name.substr(5));
    for (const auto& f : fs::directory_iterator(entry.path(), ec))
      if (f.is_regular_file()) c.bytes += f.file_size();
    out.push_back(c);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return out;
}

CheckpointListing inspect_checkpoint(const std::string& dir) {
  CheckpointListing c;
  c.dir = dir;
  c.has_manifest = has_manifest(dir);
  std::unique_ptr<CheckpointReader> reader;
  Status s = CheckpointReader::open(dir, &reader);
  c.complete = s.ok();
  if (!s.ok()) c.problem = s.to_string();
  return c;
}

Status move_checkpoint_aside(const std::string& dir, std::string* moved_to) {
  std::error_code ec;
  for (int n = 1;; ++n) {
    const std::string to = dir + ".damaged-" + std::to_string(n);
    if (fs::exists(to, ec)) continue;
    if (::rename(dir.c_str(), to.c_str()) != 0)
      return Status::io_error("cannot rename '" + dir + "' to '" + to + "': " + errno_text());
    *moved_to = to;
    return Status::ok_status();
  }
}

std::string newest_complete_checkpoint(const std::string& root) {
  std::vector<CheckpointListing> all = list_checkpoints(root);
  for (auto it = all.rbegin(); it != all.rend(); ++it)
    if (it->complete) return it->dir;
  return "";
}

Status CheckpointReader::open(const std::string& dir, std::unique_ptr<CheckpointReader>* out) {
  auto reader = std::unique_ptr<CheckpointReader>(new CheckpointReader());
  reader->dir_ = dir;
  const std::string path = dir + "/" + kManifest;
  std::string bytes;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status::not_found("checkpoint directory '" + dir + "' does not exist");
  if (!fs::exists(path, ec)) return Status::not_found("'" + path + "' is missing: the checkpoint is incomplete");
  if (!fs::is_regular_file(path, ec) || !read_file(path, &bytes)) return Status::io_error("cannot read '" + path + "'");
  checkpoint::Manifest& m = reader->manifest_;
  uint32_t version = 0;  // the manifest's decides
  Status st = parse_metadata(path, bytes, "checkpoint manifest", &version, &m);
  if (st.ok()) st = check_manifest(m, version, path);
  if (!st.ok()) return st;
  // The files against the checked manifest, before anything is allocated from it.
  for (const auto& s : m.shards()) {
    const std::string f = dir + "/" + s.file();
    if (!fs::is_regular_file(f, ec)) return Status::not_found("shard file '" + f + "' is missing");
    const uintmax_t size = fs::file_size(f, ec);
    if (ec) return Status::io_error("cannot read the size of '" + f + "': " + ec.message());
    if (size != s.bytes())
      return Status::corruption("shard file '" + f + "' has " + std::to_string(size) + " bytes, the manifest says " +
                                std::to_string(s.bytes()) + " (truncated or replaced)");
    const std::string index_path = dir + "/" + checkpoint_shard_file(s.rank(), "index");
    checkpoint::ShardIndex index;
    if (!fs::is_regular_file(index_path, ec) || !read_file(index_path, &bytes))
      return Status::corruption("shard index '" + index_path + "' is missing or unreadable");
    uint32_t index_version = version;
    st = parse_metadata(index_path, bytes, "shard index", &index_version, &index);
    if (st.ok()) st = check_shard_index(index, index_path, m, path, s.rank());
    if (!st.ok()) return st;
  }
  *out = std::move(reader);
  return Status::ok_status();
}

const checkpoint::TensorEntry* CheckpointReader::find(const std::string& name, int64_t expert) const {
  for (const auto& e : manifest_.tensors())
    if (e.name() == name && e.expert() == expert) return &e;
  return nullptr;
}

Status CheckpointReader::read(const checkpoint::TensorEntry& e, void* out) const {
  const std::string path = dir_ + "/" + e.file();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::io_error("cannot open '" + path + "': " + errno_text());
  const bool ok = read_all_at(fd, out, e.length(), e.offset());
  ::close(fd);
  const std::string what = "tensor '" + e.name() + (e.expert() >= 0 ? "' (expert " + std::to_string(e.expert()) + ")" : "'");
  if (!ok) return Status::io_error("cannot read " + what + " from '" + path + "'");
  const uint32_t crc = crc32c(out, e.length());
  if (crc != e.crc32c()) {
    char buf[96];
    std::snprintf(buf, sizeof buf, ": CRC32C %08x, the manifest says %08x", crc, e.crc32c());
    return Status::corruption(what + " in '" + path + "' is damaged" + buf);
  }
  return Status::ok_status();
}

Status CheckpointReader::read(const checkpoint::TensorEntry& e, Tensor& out) const {
  Shape shape(e.shape().begin(), e.shape().end());
  if (out.shape() != shape)
    return Status::invalid_argument("tensor '" + e.name() + "' has shape " + to_string_shape(e) + " in checkpoint '" +
                                    dir_ + "' but " + to_string(out.shape()) + " in this model");
  if (e.dtype() != to_string(out.dtype()))
    return Status::invalid_argument("tensor '" + e.name() + "' has dtype " + e.dtype() + " in the checkpoint but " +
                                    to_string(out.dtype()) + " in this model");
  if (out.device() == Device::CPU) return read(e, out.data());
  Tensor host = Tensor::empty(out.shape(), out.dtype());  // a device tensor loads through the host
  Status s = read(e, host.data());
  if (s.ok()) out.copy_from(host);
  return s;
}

std::vector<std::string> CheckpointReader::verify() const {
  std::vector<std::string> problems;
  std::vector<char> buf;
  // open() checked that each file is its entries in order, each at the first 64-byte boundary after
  // the previous one: the bytes between them are the padding, which must be zeros.
  std::map<std::string, uint64_t> end;
  for (const auto& e : manifest_.tensors()) {
    const uint64_t gap = e.offset() - end[e.file()];  // < 64
    if (gap > 0) {
      char pad[64] = {};
      const std::string path = dir_ + "/" + e.file();
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      const bool read = fd >= 0 && read_all_at(fd, pad, gap, end[e.file()]);
      if (fd >= 0) ::close(fd);
      if (!read || std::count(pad, pad + gap, 0) != static_cast<std::ptrdiff_t>(gap))
        problems.push_back("corruption: the padding before tensor '" + e.name() + "' in '" + path + "' (bytes " +
                           std::to_string(end[e.file()]) + " to " + std::to_string(e.offset()) + ") is " +
                           (read ? "not all zeros" : "unreadable"));
    }
    end[e.file()] = e.offset() + e.length();
    buf.resize(e.length());
    Status s = read(e, buf.data());
    if (!s.ok()) problems.push_back(s.to_string());
  }
  return problems;
}

}  // namespace moe
