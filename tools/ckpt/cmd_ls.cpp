// moe-ckpt ls: the checkpoints of a run directory, a checkpoint root or one checkpoint directory.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/available_memory.h"
#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"

namespace fs = std::filesystem;

namespace moe::ckpt {

const char* const kLsHelp = R"(usage: moe-ckpt ls RUN_OR_CKPT_DIR

Lists the checkpoints of a run directory (RUN/checkpoints), a checkpoint root, or one checkpoint
directory: step, complete or incomplete (with the problem), size on disk, and which one `latest`
names. Exit 0 when the directory could be listed, even if some checkpoints are incomplete.
)";

int cmd_ls(const Args& args) {
  const std::string path = args.positional[0];
  std::error_code ec;
  if (!fs::is_directory(path, ec)) throw CheckpointError("'" + path + "' is not a directory");
  std::vector<CheckpointListing> all;
  std::string root, latest;
  if (looks_like_step_dir(path)) {
    CheckpointListing c;
    c.dir = path;
    for (const auto& f : fs::directory_iterator(path, ec))
      if (f.is_regular_file()) c.bytes += f.file_size();
    std::unique_ptr<CheckpointReader> reader;
    Status s = CheckpointReader::open(path, &reader);
    c.complete = s.ok();
    const std::string name = fs::path(path).lexically_normal().filename().string();
    if (s.ok())
      c.step = reader->manifest().step();
    else if (name.size() == 13 && name.rfind("step_", 0) == 0 &&
             name.find_first_not_of("0123456789", 5) == std::string::npos)
      c.step = std::stoll(name.substr(5));
    if (!s.ok()) c.problem = s.to_string();
    all.push_back(c);
    const fs::path parent = fs::path(path).lexically_normal().parent_path();
    root = parent.empty() ? std::string(".") : parent.string();
  } else {
    root = checkpoint_root(path);
    all = list_checkpoints(root);
  }
  std::ifstream f(root + "/latest");
  if (f) std::getline(f, latest);
  if (all.empty()) {
    std::printf("no checkpoints in %s\n", root.c_str());
    return 0;
  }
  std::printf("checkpoints in %s:\n", root.c_str());
  std::printf("  %10s  %-10s  %10s  %s\n", "step", "state", "size", "directory");
  bool latest_listed = false;
  for (const CheckpointListing& c : all) {
    const std::string name = fs::path(c.dir).lexically_normal().filename().string();
    const bool is_latest = !latest.empty() && name == latest;
    latest_listed = latest_listed || (is_latest && c.complete);
    std::printf("  %10s  %-10s  %10s  %s%s%s\n", c.step >= 0 ? std::to_string(c.step).c_str() : "?",
                c.complete ? "complete" : "INCOMPLETE", memory_size_text(c.bytes).c_str(), name.c_str(),
                is_latest ? "  <- latest" : "", c.complete ? "" : ("  (" + c.problem + ")").c_str());
  }
  if (!latest.empty() && !latest_listed && !looks_like_step_dir(path))
    std::printf("note: %s/latest names '%s', which is not a complete checkpoint listed here\n", root.c_str(),
                latest.c_str());
  return 0;
}

}  // namespace moe::ckpt
