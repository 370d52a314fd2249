// moe-ckpt verify: re-reads every byte of a checkpoint and checks its CRCs, shard indexes and expert slices.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"

namespace moe::ckpt {

const char* const kVerifyHelp = R"(usage: moe-ckpt verify CKPT

Checks every byte of the checkpoint: opens it as every load does (MANIFEST and shard indexes
readable, of a supported format version and matching their CRC32C; every field in range and every
size consistent with the layout and the files' real sizes; every shard index exactly its part of
the manifest; every expert tensor with one slice per expert), then re-reads every tensor checking
its CRC32C and the zero padding between tensors. Prints "ok: N tensors, M bytes verified" and exits
0, or lists each problem (naming the file and the tensor or field) and exits 1.
)";

int cmd_verify(const Args& args) {
  const std::string dir = resolve_checkpoint(args.positional[0]);
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  const std::vector<std::string> problems = reader->verify();
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
  if (reader->manifest().format_version() == 1)
    std::printf("note: format version 1 has no checksums over its MANIFEST and shard indexes; a copy written by "
                "moe-ckpt (reshard to the same --ep and --world-size) has them\n");
  return 0;
}

}  // namespace moe::ckpt
