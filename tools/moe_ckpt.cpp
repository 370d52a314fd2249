// moe-ckpt: inspects, verifies, compares, exports, imports, reshards and edits moe-train checkpoints, in one
// process (docs/checkpoint-format.md describes the format and every subcommand). This is the driver:
// the usage, the table of commands and their options, and the exit statuses; each command is in
// tools/ckpt/cmd_<command>.cpp (tools/ckpt/commands.h).
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "core/check.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/command_line.h"
#include "tools/ckpt/commands.h"

using namespace moe;
using namespace moe::ckpt;

namespace {

const char* kUsage = R"(usage: moe-ckpt COMMAND [ARGS...]      (moe-ckpt COMMAND --help for each command)

Inspects and edits moe-train checkpoints (format: docs/checkpoint-format.md). CKPT is a checkpoint
directory (one with a MANIFEST); a run directory or a checkpoint root stands for its newest complete
checkpoint. Inputs are never modified; outputs are written under OUT.tmp-<pid> and renamed to OUT,
which must not exist.

commands:
  ls RUN_OR_CKPT_DIR                    list checkpoints: step, complete or not, size, latest
  info CKPT [--config]                  layout, step, run id, config summary, parameter counts, expert usage
  tensors CKPT [--filter REGEX]         one line per stored tensor: shape, dtype, file, L2 norm, min, max
  verify CKPT                           re-read every byte and check CRCs and shard indexes
  diff A B                              compare two checkpoints tensor by tensor (exit 0 same, 1 differ)
  export CKPT [--format safetensors|hf-mixtral] OUT   safetensors with experts reassembled, or a
                                        Hugging Face Mixtral directory (a directory)
  import HF_DIR [--ep N] OUT            a Hugging Face Mixtral directory as a checkpoint
  reshard CKPT --ep N [--world-size W] OUT  the same state for another layout
  prune-experts CKPT (--keep IDS | --min-usage X) OUT   drop experts
  add-experts CKPT --count N [--from ID | --fresh] [--seed S] OUT   append experts
  upcycle CKPT --experts N [--moe-every K] [--seed S] OUT   dense FFN layers -> MoE layers

exit status: 0 success; 1 a checkpoint is damaged, incomplete or unreadable (diff: they differ);
2 a bad command line or option value (diff: any error).
)";

struct Command {
  CommandSpec spec;
  std::function<int(const Args&)> run;
};

const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      {{"ls", kLsHelp, 1, {}, {}}, cmd_ls},
      {{"info", kInfoHelp, 1, {}, {"--config"}}, cmd_info},
      {{"tensors", kTensorsHelp, 1, {"--filter"}, {}}, cmd_tensors},
      {{"verify", kVerifyHelp, 1, {}, {}}, cmd_verify},
      {{"diff", kDiffHelp, 2, {}, {}}, cmd_diff},
      {{"export", kExportHelp, 2, {"--format", "--max-shard-bytes"}, {"--with-optimizer"}}, cmd_export},
      {{"import", kImportHelp, 2, {"--ep", "--world-size", "--seq-len"}, {}}, cmd_import},
      {{"reshard", kReshardHelp, 2, {"--ep", "--world-size"}, {}}, cmd_reshard},
      {{"prune-experts", kPruneHelp, 2, {"--keep", "--min-usage", "--ep", "--world-size"}, {}}, cmd_prune},
      {{"add-experts", kAddHelp, 2, {"--count", "--from", "--seed", "--ep", "--world-size"}, {"--fresh"}}, cmd_add},
      {{"upcycle", kUpcycleHelp, 2, {"--experts", "--moe-every", "--seed", "--ep", "--world-size"}, {}}, cmd_upcycle},
  };
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::fprintf(stderr, "moe-ckpt: missing COMMAND; usage: moe-ckpt COMMAND [ARGS...] (moe-ckpt --help lists them)\n");
    return 2;
  }
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const Command* command = nullptr;
  std::string names;
  for (const Command& c : commands()) {
    if (args[0] == c.spec.name) command = &c;
    names += (names.empty() ? "" : ", ") + std::string(c.spec.name);
  }
  if (command == nullptr) {
    std::fprintf(stderr, "moe-ckpt: unknown command '%s'; accepted: %s (moe-ckpt --help)\n", args[0].c_str(),
                 names.c_str());
    return 2;
  }
  const bool is_diff = std::string(command->spec.name) == "diff";
  try {
    Args parsed;
    if (!parse_args(command->spec, std::vector<std::string>(args.begin() + 1, args.end()), &parsed)) return 0;
    return command->run(parsed);
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "moe-ckpt: %s\n", e.what());
    return 2;
  } catch (const CheckpointError& e) {
    std::fprintf(stderr, "moe-ckpt: %s\n", e.what());
    return is_diff ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-ckpt: error: %s\n", e.what());
    return is_diff ? 2 : 1;
  }
}
