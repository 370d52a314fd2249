// Finding the checkpoint a command line names (core/checkpoint/checkpoint_paths.h).
#include "core/checkpoint/checkpoint_paths.h"

#include <filesystem>

#include "core/checkpoint/checkpoint.h"

namespace fs = std::filesystem;

namespace moe {

std::string checkpoint_root(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path + "/checkpoints", ec) ? path + "/checkpoints" : path;
}

bool looks_like_step_dir(const std::string& path) {
  std::error_code ec;
  const std::string name = fs::path(path).lexically_normal().filename().string();
  return fs::exists(path + "/MANIFEST", ec) || name.rfind("step_", 0) == 0 ||
         fs::exists(path + "/shard_00000.bin", ec) || fs::exists(path + "/shard_00000.index", ec);
}

Status resolve_checkpoint_dir(const std::string& path, std::string* dir) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return Status::not_found("checkpoint directory '" + path + "' does not exist");
  *dir = path;
  if (looks_like_step_dir(path)) return Status::ok_status();
  const std::string root = checkpoint_root(path);
  if (list_checkpoints(root).empty()) return Status::ok_status();  // opening it names what is missing
  *dir = newest_complete_checkpoint(root);
  if (dir->empty())
    return Status::not_found("no complete checkpoint under '" + root + "' (moe-ckpt ls " + path + " lists them)");
  return Status::ok_status();
}

}  // namespace moe
