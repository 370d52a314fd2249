// Benchmark of checkpoint save and load against the machine's plain sequential file I/O, timed in the
// same run in the same directory: one process (local communicator), or every rank of an mpirun job.
//
// Figures (median of --repeats runs after --warmup runs; MB = 1e6 bytes):
//   bytes             = tensor bytes of the checkpoint over all ranks (--mb); each rank writes an equal
//                       share, as tensors of --tensor-mb plus one small tensor per large one
//   plain write MB/s  = bytes / 1e6 / t, t = open .. write in 64 MiB pieces .. fsync .. close of one
//                       file per rank of its share's size (slowest rank)
//   plain read MB/s   = bytes / 1e6 / t, t = open .. read in 64 MiB pieces .. close, after the file was
//                       dropped from the page cache (fsync, then posix_fadvise(POSIX_FADV_DONTNEED))
//   save MB/s         = bytes / 1e6 / t, t = save_checkpoint (shards, indexes, manifest, `latest`, each
//                       fsynced) (slowest rank)
//   load MB/s         = bytes / 1e6 / t, t = CheckpointReader::open + read of this rank's tensors (CRC32C
//                       of every byte checked), after the shard files were dropped from the page cache
//   ratios            = save / plain write and load / plain read; the target is >= 0.5 for both
// Verification (always on): every loaded tensor equals the saved one byte for byte, and the plain
// file reads back with the CRC32C it was written with. The page-cache share of the files after each
// drop is reported (mincore): near 0% means the reads really came from the device.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "core/checkpoint/checkpoint.h"
#include "parallel/checkpoint_save.h"
#include "core/crc32c.h"
#include "core/random.h"
#include "core/timer.h"
#include "parallel/communicator.h"
#include "parallel/mpi/mpi_communicator.h"

#include "bench_util.h"

namespace {

namespace fs = std::filesystem;

const char* kUsage =
    "usage: bench-checkpoint [--mb 512] [--tensor-mb 16] [--dir DIR] [--repeats 3] [--warmup 1]\n"
    "  Saves and loads a checkpoint of --mb MB (over all ranks) in a fresh folder under DIR (default: the\n"
    "  system's temporary directory), and times plain write+fsync and cold reads of files of the same\n"
    "  size there. Run alone, or under mpirun (every rank writes its share).\n";

constexpr size_t kPiece = size_t{64} << 20;  // plain I/O: 64 MiB per system call

struct Args {
  double mb = 512, tensor_mb = 16;
  std::string dir;
  int repeats = 3, warmup = 1;
  bool help = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--help" || s == "-h") {
      a.help = true;
      continue;
    }
    MOE_REQUIRE(i + 1 < argc, s, " needs a value; see --help");
    const char* v = argv[++i];
    if (s == "--mb") a.mb = moe::parse_number_argument(s, v, 1e-6, HUGE_VAL);
    else if (s == "--tensor-mb") a.tensor_mb = moe::parse_number_argument(s, v, 1e-6, HUGE_VAL);
    else if (s == "--dir") a.dir = v;
    else if (s == "--repeats") a.repeats = static_cast<int>(moe::parse_integer_argument(s, v, 1, INT_MAX));
    else if (s == "--warmup") a.warmup = static_cast<int>(moe::parse_integer_argument(s, v, 0, INT_MAX));
    else throw moe::InvalidArgument("unknown argument '" + s + "'; see --help");
  }
  return a;
}

using bench::median;

void check_io(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what + ": " + std::strerror(errno));
}

// Writes buf to a new file in 64 MiB pieces and fsyncs it.
void plain_write(const std::string& path, const char* buf, size_t n) {
  int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  check_io(fd >= 0, "cannot create '" + path + "'");
  for (size_t at = 0; at < n;) {
    const ssize_t w = ::write(fd, buf + at, std::min(kPiece, n - at));
    check_io(w > 0 || errno == EINTR, "cannot write '" + path + "'");
    if (w > 0) at += static_cast<size_t>(w);
  }
  check_io(::fsync(fd) == 0, "cannot fsync '" + path + "'");
  ::close(fd);
}

void plain_read(const std::string& path, char* buf, size_t n) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check_io(fd >= 0, "cannot open '" + path + "'");
  for (size_t at = 0; at < n;) {
    const ssize_t r = ::read(fd, buf + at, std::min(kPiece, n - at));
    check_io(r > 0 || (r < 0 && errno == EINTR), "cannot read '" + path + "'");
    if (r > 0) at += static_cast<size_t>(r);
  }
  ::close(fd);
}

// Drops a file's (clean, fsynced) pages from the page cache.
void drop_from_page_cache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check_io(fd >= 0, "cannot open '" + path + "'");
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Share of a file's pages in the page cache, in [0, 1].
double resident_fraction(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat st = {};
  ::fstat(fd, &st);
  const size_t n = static_cast<size_t>(st.st_size), page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  double share = 0;
  if (n > 0) {
    void* p = ::mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      std::vector<unsigned char> in_core((n + page - 1) / page);
      if (::mincore(p, n, in_core.data()) == 0) {
        size_t resident = 0;
        for (unsigned char c : in_core) resident += c & 1;
        share = static_cast<double>(resident) / static_cast<double>(in_core.size());
      }
      ::munmap(p, n);
    }
  }
  ::close(fd);
  return share;
}

// This rank's tensors: large ones of tensor_bytes (the last one shorter) and, after each, a small one of
// 257 floats (an odd size, like a norm gain, so the 64-byte alignment padding is exercised).
std::vector<moe::CheckpointTensor> make_tensors(uint64_t share_bytes, uint64_t tensor_bytes, int rank) {
  std::vector<moe::CheckpointTensor> out;
  uint64_t left = share_bytes;
  for (int i = 0; left > 0; ++i) {
    const uint64_t big = std::min(left, tensor_bytes);
    const uint64_t small = std::min<uint64_t>(left - big, 257 * 4);
    for (uint64_t bytes : {big, small}) {
      if (bytes == 0) continue;
      moe::Tensor t = moe::Tensor::empty({static_cast<int64_t>(bytes / 4)});
      const uint64_t stream = moe::stream_id(static_cast<uint64_t>(rank), "bench.checkpoint") ^ moe::mix64(out.size());
      float* p = t.f32();
      for (int64_t j = 0; j < t.numel(); ++j) p[j] = static_cast<float>(moe::mix64(stream ^ static_cast<uint64_t>(j)) >> 40);
      out.push_back({(bytes == big ? "big." : "small.") + std::to_string(i) + ".r" + std::to_string(rank), -1, t});
    }
    left -= big + small;
  }
  return out;
}

// A fresh folder under base on rank 0, its name sent to every rank.
std::string make_work_dir(moe::Communicator& world, const std::string& base) {
  char name[1024] = {};
  if (world.rank() == 0) {
    std::string pattern = (fs::path(base) / "bench_checkpoint_XXXXXX").string();
    if (::mkdtemp(pattern.data()) != nullptr) std::snprintf(name, sizeof name, "%s", pattern.c_str());
  }
  world.broadcast(name, sizeof name, 0);
  MOE_REQUIRE(name[0] != '\0', "cannot create a folder in '", base, "'");
  return name;
}

// Seconds of fn on the slowest rank, all ranks starting together.
template <typename Fn>
double timed(moe::Communicator& world, Fn&& fn) {
  world.barrier();
  const double t0 = moe::now_seconds();
  fn();
  return moe::all_reduce_value(world, moe::now_seconds() - t0, moe::ReduceOp::Max);
}

int run(const Args& a, moe::Communicator& world) {
  const int rank = world.rank(), W = world.size();
  const std::string base = a.dir.empty() ? fs::temp_directory_path().string() : a.dir;
  const uint64_t total_bytes = static_cast<uint64_t>(a.mb * 1e6) / (4 * W) * (4 * W);
  const uint64_t share = total_bytes / W;
  const uint64_t tensor_bytes = std::max<uint64_t>(4, static_cast<uint64_t>(a.tensor_mb * 1e6) / 4 * 4);
  const std::string work = make_work_dir(world, base);
  const std::string root = work + "/checkpoints";
  const std::string plain = work + "/plain_" + std::to_string(rank) + ".bin";

  std::vector<moe::CheckpointTensor> tensors = make_tensors(share, tensor_bytes, rank);
  std::vector<moe::Tensor> loaded;
  for (const auto& t : tensors) loaded.push_back(moe::Tensor::zeros(t.data.shape()));  // touched: no page faults timed
  std::vector<char> buf(share);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(moe::mix64(i / 64 + static_cast<uint64_t>(rank)));
  const uint32_t plain_crc = moe::crc32c(buf.data(), buf.size());

  if (rank == 0) {
    std::printf("bench-checkpoint: %.1f MB over %d rank(s) (%zu tensors per rank, the large ones %.1f MB), in %s\n",
                total_bytes / 1e6, W, tensors.size(), tensor_bytes / 1e6, work.c_str());
    std::printf("median of %d runs after %d warm-up run(s); MB/s = bytes / 1e6 / seconds of the slowest rank\n",
                a.repeats, a.warmup);
    std::fflush(stdout);
  }

  std::vector<double> t_write, t_read, t_save, t_load, cached_plain, cached_shards;
  int64_t mismatches = 0;
  for (int it = 0; it < a.warmup + a.repeats; ++it) {
    const bool counted = it >= a.warmup;
    // Plain file: write + fsync, drop from the page cache, read back.
    ::unlink(plain.c_str());
    const double tw = timed(world, [&] { plain_write(plain, buf.data(), buf.size()); });
    drop_from_page_cache(plain);
    const double plain_cached = resident_fraction(plain);
    std::fill(buf.begin(), buf.end(), 0);
    const double tr = timed(world, [&] { plain_read(plain, buf.data(), buf.size()); });
    mismatches += moe::crc32c(buf.data(), buf.size()) != plain_crc;
    ::unlink(plain.c_str());

    // Checkpoint: save, drop its files from the page cache, load (every CRC checked).
    moe::SaveRequest req;
    req.root = root;
    req.step = it + 1;
    req.header.set_run_id("bench");
    moe::checkpoint::Layout* layout = req.header.mutable_layout();  // W ranks, no experts of their own
    layout->set_world_size(W);
    layout->set_ep(1);
    layout->set_num_experts(1);
    layout->set_experts_per_rank(1);
    std::string dir;
    const double ts = timed(world, [&] { dir = moe::save_checkpoint(req, tensors, moe::checkpoint::RankState(), world); });
    for (const auto& f : fs::directory_iterator(dir)) drop_from_page_cache(f.path().string());
    char shard_name[48];
    std::snprintf(shard_name, sizeof shard_name, "/shard_%05d.bin", rank);
    const double shard_cached = resident_fraction(dir + shard_name);
    for (auto& t : loaded) t.zero();
    const double tl = timed(world, [&] {
      std::unique_ptr<moe::CheckpointReader> reader;
      moe::Status st = moe::CheckpointReader::open(dir, &reader);
      MOE_REQUIRE(st.ok(), st.to_string());
      for (size_t i = 0; i < tensors.size(); ++i) {
        const moe::checkpoint::TensorEntry* e = reader->find(tensors[i].name, -1);
        MOE_REQUIRE(e != nullptr, "tensor '", tensors[i].name, "' is missing from the checkpoint");
        st = reader->read(*e, loaded[i]);
        MOE_REQUIRE(st.ok(), st.to_string());
      }
    });
    for (size_t i = 0; i < tensors.size(); ++i)
      mismatches += std::memcmp(tensors[i].data.f32(), loaded[i].f32(), static_cast<size_t>(loaded[i].numel()) * 4) != 0;
    world.barrier();
    std::error_code ec;
    if (rank == 0) fs::remove_all(dir, ec);  // outside the timed region, and keeps the disk use to one copy

    if (counted) {
      t_write.push_back(tw);
      t_read.push_back(tr);
      t_save.push_back(ts);
      t_load.push_back(tl);
      cached_plain.push_back(moe::all_reduce_value(world, plain_cached, moe::ReduceOp::Max));
      cached_shards.push_back(moe::all_reduce_value(world, shard_cached, moe::ReduceOp::Max));
    }
  }
  mismatches = moe::all_reduce_value(world, mismatches);
  world.barrier();
  std::error_code ec;
  if (rank == 0) fs::remove_all(work, ec);

  if (rank == 0) {
    const double mb = total_bytes / 1e6;
    auto row = [&](const char* what, const std::vector<double>& t, const char* note) {
      std::printf("  %-26s %8.3f s %9.1f MB/s   %s\n", what, median(t), mb / median(t), note);
    };
    std::printf("  %-26s %10s %14s\n", "", "median", "rate");
    row("plain write + fsync", t_write, "64 MiB writes, then fsync");
    row("checkpoint save", t_save, "save_checkpoint: shards, indexes, manifest, latest");
    row("plain read (cold)", t_read, "64 MiB reads after POSIX_FADV_DONTNEED");
    row("checkpoint load (cold)", t_load, "open + read every tensor, CRC32C checked");
    std::printf("  ratio save / plain write   %.2f   (target >= 0.5)\n", median(t_write) / median(t_save));
    std::printf("  ratio load / plain read    %.2f   (target >= 0.5)\n", median(t_read) / median(t_load));
    std::printf("  page cache after the drop: plain file %.0f%%, checkpoint shards %.0f%% resident (worst run)\n",
                100 * *std::max_element(cached_plain.begin(), cached_plain.end()),
                100 * *std::max_element(cached_shards.begin(), cached_shards.end()));
    std::printf("verification: %s\n", mismatches == 0 ? "every loaded tensor equals the saved one; plain reads match"
                                                       : "FAILED: loaded data differs from what was written");
  }
  return mismatches == 0 ? 0 : 1;
}

// Launched by mpirun (OpenMPI, or a PMI-based launcher such as Slurm's)?
bool under_mpi_launcher() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<moe::MpiSession> session;
  std::unique_ptr<moe::Communicator> world;
  try {
    if (under_mpi_launcher()) {
      session = std::make_unique<moe::MpiSession>(&argc, &argv);
      world = moe::make_mpi_world_communicator();
    } else {
      world = moe::make_local_communicator();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-checkpoint: %s\n", e.what());
    return 1;
  }
  const int rank = world->rank();
  Args a;
  try {
    a = parse(argc, argv);  // the same verdict on every rank: no collective left waiting
  } catch (const std::exception& e) {
    if (rank == 0) std::fprintf(stderr, "bench-checkpoint: %s\n", e.what());
    return 1;
  }
  if (a.help) {
    if (rank == 0) std::printf("%s", kUsage);
    return 0;
  }
  try {
    return run(a, *world);
  } catch (const std::exception& e) {
    // Possibly this rank's alone (an I/O error): take the others down rather than leave them waiting.
    std::fprintf(stderr, "bench-checkpoint: rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    if (world->size() > 1) moe::mpi_abort(1);
    return 1;
  }
}
