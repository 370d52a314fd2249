// moe-ckpt reshard: a checkpoint's state rewritten as if saved by another number of ranks and expert-parallel size.
#include <memory>
#include <string>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "core/command_line.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/command_line.h"
#include "tools/ckpt/commands.h"
#include "tools/ckpt/written_report.h"

namespace moe::ckpt {

const char* const kReshardHelp = R"(usage: moe-ckpt reshard CKPT --ep N [--world-size W] OUT

Writes the checkpoint's state as if saved by W ranks (default N) with expert-parallel size N, into
the new checkpoint directory OUT: every whole tensor once (ranks in turn), expert e in the shard of
rank e / (E / N). N must divide W and E. The run id, step, training state and expert usage are kept;
per-rank counters are dropped (they cannot be split for another world size); the config gets
parallel.ep = N. moe-train loads it with checkpoint.init_from=OUT on W ranks.
  --ep N           expert-parallel size of the result
  --world-size W   number of ranks of the result (default N)
)";

int cmd_reshard(const Args& args) {
  MOE_REQUIRE(args.has("--ep"), "reshard needs --ep N (the expert-parallel size of the result)");
  const std::string out = args.positional[1];
  require_new_output(out);
  const int ep = static_cast<int>(parse_integer_argument("--ep", args.get("--ep"), 1, INT_MAX));
  const int world = args.has("--world-size")
                        ? static_cast<int>(parse_integer_argument("--world-size", args.get("--world-size"), 1, INT_MAX))
                        : ep;
  MOE_REQUIRE(world % ep == 0, "--ep ", ep, " must divide the world size ", world,
              args.has("--world-size") ? " (--world-size)" : "");
  const std::string dir = resolve_checkpoint(args.positional[0]);
  {
    std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);  // the layout check before reading everything
    const int64_t E = reader->manifest().layout().num_experts();
    MOE_REQUIRE(E % ep == 0, "checkpoint '", dir, "' has ", E,
                " experts per MoE layer, which is not divisible by --ep ", ep);
  }
  CheckpointData data = load_checkpoint_data(dir);
  write_checkpoint_data(data, world, ep, out);
  data.config.parallel.ep = ep;
  report_written(out, data, world, ep, {});
  return 0;
}

}  // namespace moe::ckpt
