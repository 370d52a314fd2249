// Finding the checkpoint a command line names (tools/ckpt/checkpoint_paths.h).
#include "tools/ckpt/checkpoint_paths.h"

#include <cstdio>
#include <filesystem>

#include "core/checkpoint/checkpoint.h"
#include "tools/ckpt/ckpt_data.h"

namespace fs = std::filesystem;

namespace moe::ckpt {

namespace {

bool has_manifest(const std::string& dir) {
  std::error_code ec;
  return fs::exists(dir + "/MANIFEST", ec);
}

}  // namespace

std::string checkpoint_root(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path + "/checkpoints", ec) ? path + "/checkpoints" : path;
}

bool looks_like_step_dir(const std::string& path) {
  const std::string name = fs::path(path).lexically_normal().filename().string();
  return has_manifest(path) || name.rfind("step_", 0) == 0 || fs::exists(path + "/shard_00000.bin") ||
         fs::exists(path + "/shard_00000.index");
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) throw CheckpointError("checkpoint directory '" + path + "' does not exist");
  if (looks_like_step_dir(path)) return path;
  const std::string root = checkpoint_root(path);
  if (list_checkpoints(root).empty()) return path;  // open() names what is missing
  const std::string dir = newest_complete_checkpoint(root);
  if (dir.empty()) throw CheckpointError("no complete checkpoint under '" + root + "' (moe-ckpt ls " + path + ")");
  std::fprintf(stderr, "moe-ckpt: using %s, the newest complete checkpoint under %s\n", dir.c_str(), root.c_str());
  return dir;
}

}  // namespace moe::ckpt
