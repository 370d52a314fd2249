// Checks of the run's directories and the rule for reusing a run directory (launch/trainer/run_directory.h).
#include "launch/trainer/run_directory.h"

#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace fs = std::filesystem;

namespace moe {

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The name of the pseudo file system `path` lies on, or "" for an ordinary one.
std::string pseudo_file_system(const fs::path& path) {
  struct statfs st = {};
  if (::statfs(path.c_str(), &st) != 0) return "";
  switch (st.f_type) {
    case PROC_SUPER_MAGIC: return "proc";
    case SYSFS_MAGIC: return "sysfs";
    case CGROUP_SUPER_MAGIC:
    case CGROUP2_SUPER_MAGIC: return "cgroup";
    case DEBUGFS_MAGIC: return "debugfs";
    default: return "";
  }
}

// Why this process cannot create or write the directory `path` ("" when it can).
std::string unwritable_directory(const std::string& path) {
  std::error_code ec;
  fs::path existing = path.empty() ? fs::path(".") : fs::path(path);
  // The nearest part of the path that exists (status() reports "not found" under a file too).
  while (!fs::exists(existing, ec)) {
    existing = existing.has_relative_path() ? existing.parent_path() : fs::path(".");
    if (existing.empty()) existing = ".";
  }
  const bool is_path = existing == fs::path(path);
  const std::string where = is_path ? std::string("it") : detail::concat("'", existing.string(), "', part of it,");
  if (!fs::is_directory(existing, ec)) return where + " is a file, not a directory";
  const std::string pseudo = pseudo_file_system(existing);
  if (!pseudo.empty()) return where + " is on the " + pseudo + " pseudo file system, which holds no ordinary files";
  if (::access(existing.c_str(), W_OK | X_OK) != 0) return where + " is not writable: " + std::strerror(errno);
  return "";
}

}  // namespace

void check_run_paths(const TrainConfig& cfg, bool training) {
  const std::string run_dir_problem = unwritable_directory(cfg.run.dir);
  MOE_REQUIRE(run_dir_problem.empty(), "run.dir '", cfg.run.dir, "' cannot be used: ", run_dir_problem,
              "; choose another run.dir");
  std::error_code ec;
  for (const char* name : kRunFiles) {
    const fs::path f = fs::path(cfg.run.dir) / name;
    MOE_REQUIRE(!fs::exists(f, ec) || fs::is_regular_file(f, ec), "run.dir '", cfg.run.dir, "' cannot be used: '",
                f.string(), "' is not a regular file; moe-train writes that file");
  }
  const fs::path tb = fs::path(cfg.run.dir) / kTensorBoardDir;
  MOE_REQUIRE(!fs::exists(tb, ec) || fs::is_directory(tb, ec), "run.dir '", cfg.run.dir, "' cannot be used: '",
              tb.string(), "' is not a directory; moe-train writes its event files there");
  const fs::path metrics = fs::path(cfg.run.dir) / "metrics.jsonl";
  MOE_REQUIRE(!fs::exists(metrics, ec) || ::access(metrics.c_str(), W_OK) == 0, "run.dir '", cfg.run.dir,
              "' cannot be used: '", metrics.string(), "' is not writable: ", std::strerror(errno));
  if (training) {
    const std::string problem = unwritable_directory(cfg.checkpoint.dir);
    MOE_REQUIRE(problem.empty(), "checkpoint.dir '", cfg.checkpoint.dir, "' cannot be used: ", problem,
                "; choose another checkpoint.dir");
  }
}

RunDirectoryState read_run_directory(const std::string& dir) {
  RunDirectoryState s;
  std::error_code ec;
  for (const char* name : kRunFiles) s.holds_run |= fs::exists(fs::path(dir) / name, ec);
  s.holds_run |= fs::exists(fs::path(dir) / kTensorBoardDir, ec);
  s.finished = fs::exists(fs::path(dir) / "DONE", ec);
  s.config_yaml = read_text(fs::path(dir) / "config.yaml");
  s.run_id = read_text(fs::path(dir) / "run_id");
  while (!s.run_id.empty() && std::isspace(static_cast<unsigned char>(s.run_id.back()))) s.run_id.pop_back();
  return s;
}

std::string run_directory_refusal(const RunDirectoryState& state, const TrainConfig& cfg,
                                  const std::string& start_run_id) {
  if (!state.holds_run) return "";
  if (!start_run_id.empty() && start_run_id == state.run_id) return "";  // resumes it
  const std::string how = "; resume it from one of its checkpoints (checkpoint.resume=auto), choose another run.dir, "
                          "or delete '" + cfg.run.dir + "' to start over";
  const std::string start = start_run_id.empty() ? "this run would start from step 0"
                                                 : "this run starts from a checkpoint of another run (" +
                                                       start_run_id + ")";
  if (state.finished) return "run.dir '" + cfg.run.dir + "' holds a finished run (DONE) and " + start + how;
  if (state.config_yaml != to_yaml(cfg)) {
    // The first line that differs, to show what changed.
    std::istringstream a(state.config_yaml), b(to_yaml(cfg));
    std::string la, lb;
    while (true) {
      const bool more_a = static_cast<bool>(std::getline(a, la)), more_b = static_cast<bool>(std::getline(b, lb));
      if (!more_a) la = "(end of file)";
      if (!more_b) lb = "(end of file)";
      if (!more_a || !more_b || la != lb) break;
    }
    return "run.dir '" + cfg.run.dir + "' holds another run: " +
           (state.config_yaml.empty() ? "it has no config.yaml"
                                      : "its config.yaml differs from this run's config ('" + la + "' there, '" + lb +
                                            "' here)") +
           ", and " + start + how;
  }
  return "";
}

}  // namespace moe
