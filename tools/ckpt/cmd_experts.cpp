// moe-ckpt prune-experts, add-experts and upcycle: the expert surgery of tools/ckpt/surgery.h on a
// checkpoint, written as a new one.
#include <algorithm>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/command_line.h"
#include "tools/ckpt/commands.h"
#include "tools/ckpt/surgery.h"
#include "tools/ckpt/written_report.h"

namespace moe::ckpt {

namespace {

// The layout of a rewritten checkpoint: --ep / --world-size, else the source's when it still fits.
void choose_layout(const Args& args, const CheckpointData& data, int* world_size, int* ep) {
  const checkpoint::Layout& src = data.header.layout();
  *ep = args.has("--ep") ? static_cast<int>(parse_integer_argument("--ep", args.get("--ep"), 1, INT_MAX)) : src.ep();
  *world_size = args.has("--world-size")
                    ? static_cast<int>(parse_integer_argument("--world-size", args.get("--world-size"), 1, INT_MAX))
                : args.has("--ep") ? *ep
                                   : src.world_size();
  MOE_REQUIRE(*world_size % *ep == 0, "--ep ", *ep, " must divide the world size ", *world_size,
              args.has("--world-size") ? " (--world-size)" : " (the checkpoint's)");
  const int64_t E = data.config.moe.num_experts;
  MOE_REQUIRE(E % *ep == 0, "the result has ", E, " experts per MoE layer, which is not divisible by ",
              args.has("--ep") ? "--ep " : "the checkpoint's ep = ", *ep,
              args.has("--ep") ? "" : "; pass --ep N (and --world-size W) for the result's layout");
}

// Writes the edited checkpoint `data` to `out` in the layout choose_layout picks and reports it.
int write_result(const Args& args, const CheckpointData& data, const std::string& out,
                 const std::vector<std::string>& notes) {
  int world = 0, ep = 0;
  choose_layout(args, data, &world, &ep);
  write_checkpoint_data(data, world, ep, out);
  report_written(out, data, world, ep, notes);
  return 0;
}

// --seed S, else the config's run.seed.
uint64_t seed_option(const Args& args, const CheckpointData& data) {
  return static_cast<uint64_t>(args.has("--seed") ? parse_integer_argument("--seed", args.get("--seed"), 0, INT64_MAX)
                                                  : data.config.run.seed);
}

}  // namespace

const char* const kPruneHelp =
    R"(usage: moe-ckpt prune-experts CKPT (--keep IDS | --min-usage X) [--ep N] [--world-size W] OUT

Keeps some experts of every MoE layer and drops the others: their rows of layers.<i>.moe.w_in and
w_out, their columns of the router w_gate (d, E) -> (d, E'), their selection_bias entries, the same
slices of the optimizer state and their recorded usage. Kept experts are renumbered 0..E'-1 in
ascending order of their old ids. The config gets moe.num_experts = E' and moe.top_k clamped to E'
(noted). The result keeps the source layout when E' is divisible by its ep, else pass --ep.
  --keep IDS       global expert ids to keep, comma-separated (e.g. 0,2,3)
  --min-usage X    keep each expert whose recorded share of a MoE layer's kept tokens is >= X in at
                   least one MoE layer (the union over layers: E is the same for every layer)
  --ep N, --world-size W   layout of the result (as for reshard)
)";

int cmd_prune(const Args& args) {
  MOE_REQUIRE(args.has("--keep") != args.has("--min-usage"),
              "prune-experts needs exactly one of --keep IDS and --min-usage X");
  const std::string out = args.positional[1];
  require_new_output(out);
  std::vector<int64_t> keep;
  if (args.has("--keep")) {
    std::string list = args.get("--keep");
    size_t start = 0;
    while (start <= list.size()) {
      const size_t comma = std::min(list.find(',', start), list.size());
      keep.push_back(parse_integer_argument("--keep", list.substr(start, comma - start), 0, INT64_MAX));
      start = comma + 1;
    }
    std::sort(keep.begin(), keep.end());
  }
  const double min_usage =
      args.has("--min-usage") ? parse_number_argument("--min-usage", args.get("--min-usage"), 0, 1) : 0;
  CheckpointData data = load_checkpoint_data(resolve_checkpoint(args.positional[0]));
  std::vector<std::string> notes;
  if (args.has("--min-usage")) {
    keep = experts_with_usage(data, min_usage);
    std::string ids;
    for (int64_t e : keep) {
      if (!ids.empty()) ids += ',';
      ids += std::to_string(e);
    }
    notes.push_back("experts with a usage share >= " + args.get("--min-usage") +
                    " in some MoE layer: " + (ids.empty() ? "none" : ids));
  }
  const int64_t before = data.config.moe.num_experts;
  prune_experts(data, keep, &notes);
  notes.push_back("kept " + std::to_string(keep.size()) + " of " + std::to_string(before) + " experts");
  return write_result(args, data, out, notes);
}

const char* const kAddHelp =
    R"(usage: moe-ckpt add-experts CKPT --count N [--from ID | --fresh] [--seed S] [--ep N] [--world-size W] OUT

Appends N experts (ids E..E+N-1) to every MoE layer. With --from ID (default 0) each new expert is a
copy of expert ID: its weights, its router column of w_gate and its selection_bias entry (a twin
that splits from the original once something breaks the tie: router jitter, capacity drops, or the
router's own gradient). With --fresh the new experts' weights are drawn like moe-train's (w_in
N(0, model.init_std), w_out N(0, init_std / sqrt(2 n_layers))) from seed S (default run.seed), with a
zero router column (logit 0 for every token) and zero selection_bias. The optimizer state of every
new entry is zero. The config gets moe.num_experts = E + N.
  --count N       experts to add
  --from ID       copy expert ID (default 0)
  --fresh         draw new experts instead of copying
  --seed S        seed of --fresh (default: the config's run.seed)
  --ep N, --world-size W   layout of the result (as for reshard)
)";

int cmd_add(const Args& args) {
  MOE_REQUIRE(args.has("--count"), "add-experts needs --count N");
  MOE_REQUIRE(!(args.has("--from") && args.has("--fresh")), "--from and --fresh exclude each other");
  const std::string out = args.positional[1];
  require_new_output(out);
  const int64_t count = parse_integer_argument("--count", args.get("--count"), 1, INT64_MAX);
  int64_t from = args.has("--from") ? parse_integer_argument("--from", args.get("--from"), 0, INT64_MAX) : 0;
  if (args.has("--fresh")) from = -1;
  CheckpointData data = load_checkpoint_data(resolve_checkpoint(args.positional[0]));
  const uint64_t seed = seed_option(args, data);
  std::vector<std::string> notes;
  add_experts(data, count, from, seed, &notes);
  return write_result(args, data, out, notes);
}

const char* const kUpcycleHelp =
    R"(usage: moe-ckpt upcycle CKPT --experts N [--moe-every K] [--seed S] [--ep N] [--world-size W] OUT

Sparse upcycling: every layer that model.moe_every = K makes an MoE layer ((i + 1) % K == 0; default
K = 1, every layer) and that is a dense layer in CKPT becomes an MoE layer of N experts, each a copy
of the layer's dense FFN (layers.<i>.ffn.w_in/w_out -> layers.<i>.moe.w_in/w_out), with a router
w_gate (d, N) drawn N(0, model.init_std) from seed S (default run.seed) and a zero selection_bias.
MoE layers already in CKPT stay as they are (N must equal their expert count). The optimizer state
is replaced by zeros for every parameter with optimizer_steps 0: a fresh optimizer. The config gets
model.moe_every = K, moe.num_experts = N, moe.expert_hidden = model.dense_hidden, moe.activation =
model.dense_activation, and moe.top_k clamped to N. The step and data position are kept.
  --experts N     experts per upcycled layer
  --moe-every K   the result's model.moe_every (default 1)
  --seed S        router seed (default: the config's run.seed)
  --ep N, --world-size W   layout of the result (as for reshard)
)";

int cmd_upcycle(const Args& args) {
  MOE_REQUIRE(args.has("--experts"), "upcycle needs --experts N");
  const std::string out = args.positional[1];
  require_new_output(out);
  const int64_t experts = parse_integer_argument("--experts", args.get("--experts"), 1, INT64_MAX);
  const int64_t every =
      args.has("--moe-every") ? parse_integer_argument("--moe-every", args.get("--moe-every"), 1, INT64_MAX) : 1;
  CheckpointData data = load_checkpoint_data(resolve_checkpoint(args.positional[0]));
  const uint64_t seed = seed_option(args, data);
  std::vector<std::string> notes;
  upcycle(data, experts, every, seed, &notes);
  return write_result(args, data, out, notes);
}

}  // namespace moe::ckpt
