// moe-ckpt export: a checkpoint's tensors as safetensors, experts reassembled into whole tensors.
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/available_memory.h"
#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "tools/ckpt/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/command_line.h"
#include "tools/ckpt/commands.h"
#include "tools/ckpt/safetensors.h"

namespace moe::ckpt {

const char* const kExportHelp =
    R"(usage: moe-ckpt export CKPT [--format safetensors] [--with-optimizer] [--max-shard-bytes N] OUT

Writes the checkpoint's tensors as safetensors into the new directory OUT: OUT/model.safetensors,
or, when the tensors total more than --max-shard-bytes, Hugging Face's sharded form
(OUT/model.safetensors.index.json with a weight_map, OUT/model-00001-of-0000N.safetensors, ...).
Expert slices are reassembled into whole (E, ...) tensors under the parameter's name, so the export
does not depend on the layout the checkpoint was saved with. __metadata__ holds step, run_id,
format_version and config_yaml. dtypes F32 and I32, little-endian.
  --format safetensors   the output format (the only one, and the default)
  --with-optimizer       include the optimizer state ("adamw.m.<param>", ...); left out by default
  --max-shard-bytes N    shard above N bytes (default 4G; suffixes K, M, G are binary)
)";

int cmd_export(const Args& args) {
  const std::string format = args.has("--format") ? args.get("--format") : "safetensors";
  MOE_REQUIRE(format == "safetensors", "--format '", format, "' is not supported; accepted: safetensors");
  const uint64_t max_shard = args.has("--max-shard-bytes")
                                 ? parse_bytes("--max-shard-bytes", args.get("--max-shard-bytes"))
                                 : uint64_t{4} << 30;
  const std::string out = args.positional[1];
  require_new_output(out);
  const std::string dir = resolve_checkpoint(args.positional[0]);
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  std::vector<TensorInfo> chosen;
  for (const TensorInfo& t : list_tensors(*reader))
    if (args.has("--with-optimizer") || !is_optimizer_state(t.name)) chosen.push_back(t);
  const checkpoint::Manifest& m = reader->manifest();
  const std::map<std::string, std::string> metadata = {{"step", std::to_string(m.step())},
                                                       {"run_id", m.run_id()},
                                                       {"format_version", std::to_string(m.format_version())},
                                                       {"config_yaml", m.config_yaml()}};
  PendingOutput pending(out);
  const std::vector<std::string> files = write_safetensors(*reader, chosen, metadata, max_shard, pending.tmp());
  pending.commit();
  uint64_t bytes = 0;
  for (const TensorInfo& t : chosen) bytes += static_cast<uint64_t>(t.numel()) * 4;
  std::printf("wrote %s: %zu tensors, %s in %zu file%s (%s", out.c_str(), chosen.size(), memory_size_text(bytes).c_str(),
              files.size(), files.size() == 1 ? "" : "s", files[0].c_str());
  std::printf("%s)\n", files.size() > 1 ? (", ..., " + files.back()).c_str() : "");
  return 0;
}

}  // namespace moe::ckpt
