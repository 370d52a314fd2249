// moe-ckpt verify: re-reads every byte of a checkpoint and checks its CRCs, shard indexes and expert slices.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint/checkpoint.h"
#include "tools/ckpt/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"

namespace moe::ckpt {

const char* const kVerifyHelp = R"(usage: moe-ckpt verify CKPT

Opens the checkpoint (manifest readable and of a supported version, every shard file present with
its recorded size, every shard index of the same run and step), re-reads every tensor and checks
its CRC32C, checks that each shard index lists exactly the manifest's entries for its file, and
that every expert tensor has one slice per expert. Prints "ok: N tensors, M bytes verified" and
exits 0, or lists each problem (naming the file and the tensor) and exits 1.
)";

int cmd_verify(const Args& args) {
  const std::string dir = resolve_checkpoint(args.positional[0]);
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  std::vector<std::string> problems = reader->verify();
  std::vector<TensorInfo> tensors;
  const Status structure = list_tensors(*reader, &tensors);
  if (!structure.ok()) problems.push_back(structure.to_string());
  if (!problems.empty()) {
    for (const std::string& p : problems) std::fprintf(stderr, "moe-ckpt: %s\n", p.c_str());
    std::fprintf(stderr, "moe-ckpt: %s: %zu problem%s found\n", dir.c_str(), problems.size(),
                 problems.size() == 1 ? "" : "s");
    return 1;
  }
  uint64_t bytes = 0;
  for (const auto& e : reader->manifest().tensors()) bytes += e.length();
  std::printf("ok: %d tensors, %llu bytes verified (%s)\n", reader->manifest().tensors_size(),
              static_cast<unsigned long long>(bytes), dir.c_str());
  return 0;
}

}  // namespace moe::ckpt
