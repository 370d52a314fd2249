// moe-ckpt: inspects, verifies, compares, exports, reshards and edits moe-train checkpoints, in one
// process (docs/checkpoint-format.md describes the format and every subcommand).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/safetensors.h"
#include "tools/ckpt/surgery.h"

namespace fs = std::filesystem;
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
  export CKPT [--format safetensors] OUT   safetensors with experts reassembled (a directory)
  reshard CKPT --ep N [--world-size W] OUT  the same state for another layout
  prune-experts CKPT (--keep IDS | --min-usage X) OUT   drop experts
  add-experts CKPT --count N [--from ID | --fresh] [--seed S] OUT   append experts
  upcycle CKPT --experts N [--moe-every K] [--seed S] OUT   dense FFN layers -> MoE layers

exit status: 0 success; 1 a checkpoint is damaged, incomplete or unreadable (diff: they differ);
2 a bad command line or option value (diff: any error).
)";

// ---- command line ----

struct CommandSpec {
  const char* name;
  const char* help;
  int positionals;                         // exact number of positional arguments
  std::vector<std::string> value_options;  // "--ep" takes a value
  std::vector<std::string> flags;          // "--config" takes none
};

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // flags map to ""
  bool has(const std::string& o) const { return options.count(o) > 0; }
  const std::string& get(const std::string& o) const { return options.at(o); }
};

std::string accepted_options(const CommandSpec& spec) {
  std::string s;
  for (const auto& o : spec.value_options) s += (s.empty() ? "" : ", ") + o + " VALUE";
  for (const auto& o : spec.flags) s += (s.empty() ? "" : ", ") + o;
  return s.empty() ? "--help" : s + ", --help";
}

// Parses argv after the command name. Returns false when --help was asked for (the help is printed).
bool parse_args(const CommandSpec& spec, const std::vector<std::string>& argv, Args* args) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(spec.help, stdout);
      return false;
    }
    if (a.size() > 2 && a.rfind("--", 0) == 0) {
      const size_t eq = a.find('=');
      const std::string name = a.substr(0, eq);
      const bool takes_value =
          std::find(spec.value_options.begin(), spec.value_options.end(), name) != spec.value_options.end();
      const bool flag = std::find(spec.flags.begin(), spec.flags.end(), name) != spec.flags.end();
      MOE_REQUIRE(takes_value || flag, "unknown option '", name, "' for '", spec.name,
                  "'; accepted: ", accepted_options(spec));
      MOE_REQUIRE(!args->has(name), "option ", name, " given twice");
      if (flag) {
        MOE_REQUIRE(eq == std::string::npos, "option ", name, " takes no value");
        args->options[name] = "";
      } else if (eq != std::string::npos) {
        args->options[name] = a.substr(eq + 1);
      } else {
        MOE_REQUIRE(i + 1 < argv.size(), "option ", name, " needs a value (see moe-ckpt ", spec.name, " --help)");
        args->options[name] = argv[++i];
      }
      continue;
    }
    args->positional.push_back(a);
  }
  const int n = static_cast<int>(args->positional.size());
  MOE_REQUIRE(n >= spec.positionals, "'", spec.name, "' needs ", spec.positionals, " argument",
              spec.positionals > 1 ? "s" : "", ", got ", n, "; usage: moe-ckpt ", spec.name, " --help");
  MOE_REQUIRE(n <= spec.positionals, "'", spec.name, "' takes ", spec.positionals, " argument",
              spec.positionals > 1 ? "s" : "", "; unexpected '", args->positional[spec.positionals], "'");
  return true;
}

int64_t parse_int(const std::string& option, const std::string& value) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MOE_REQUIRE(used == value.size() && !value.empty(), option, ": expected an integer, got '", value, "'");
  return v;
}

double parse_double(const std::string& option, const std::string& value) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MOE_REQUIRE(used == value.size() && !value.empty() && std::isfinite(v), option, ": expected a number, got '", value,
              "'");
  return v;
}

// "4096", "64K", "512M", "4G" (binary units, an optional trailing "iB" or "B").
uint64_t parse_bytes(const std::string& option, const std::string& value) {
  std::string digits = value, unit;
  const size_t cut = value.find_first_not_of("0123456789");
  if (cut != std::string::npos) {
    digits = value.substr(0, cut);
    unit = value.substr(cut);
  }
  uint64_t scale = 1;
  if (unit == "K" || unit == "KiB" || unit == "KB")
    scale = uint64_t{1} << 10;
  else if (unit == "M" || unit == "MiB" || unit == "MB")
    scale = uint64_t{1} << 20;
  else if (unit == "G" || unit == "GiB" || unit == "GB")
    scale = uint64_t{1} << 30;
  else
    MOE_REQUIRE(unit.empty() || unit == "B", option, ": expected bytes such as 4096, 64K, 512M or 4G, got '", value,
                "'");
  const int64_t n = parse_int(option, digits);
  MOE_REQUIRE(n >= 1, option, " must be at least 1 byte, got '", value, "'");
  return static_cast<uint64_t>(n) * scale;
}

// ---- where checkpoints are ----

bool has_manifest(const std::string& dir) {
  std::error_code ec;
  return fs::exists(dir + "/MANIFEST", ec);
}

// A checkpoint root for a run directory (RUN/checkpoints) or a root itself.
std::string checkpoint_root(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path + "/checkpoints", ec) ? path + "/checkpoints" : path;
}

bool looks_like_step_dir(const std::string& path) {
  const std::string name = fs::path(path).lexically_normal().filename().string();
  return has_manifest(path) || name.rfind("step_", 0) == 0 || fs::exists(path + "/shard_00000.bin") ||
         fs::exists(path + "/shard_00000.index");
}

// CKPT as given, or the newest complete checkpoint when it is a run directory or a checkpoint root.
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

std::string layout_text(const checkpoint::Layout& l) {
  return "world size " + std::to_string(l.world_size()) + ", ep " + std::to_string(l.ep()) + ", " +
         std::to_string(l.num_experts()) + " experts, " + std::to_string(l.experts_per_rank()) + " per rank";
}

// ---- ls ----

const char* kLsHelp = R"(usage: moe-ckpt ls RUN_OR_CKPT_DIR

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
    root = fs::path(path).lexically_normal().parent_path().string();
    if (root.empty()) root = ".";
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
                c.complete ? "complete" : "INCOMPLETE", human_bytes(c.bytes).c_str(), name.c_str(),
                is_latest ? "  <- latest" : "", c.complete ? "" : ("  (" + c.problem + ")").c_str());
  }
  if (!latest.empty() && !latest_listed && !looks_like_step_dir(path))
    std::printf("note: %s/latest names '%s', which is not a complete checkpoint listed here\n", root.c_str(),
                latest.c_str());
  return 0;
}

// ---- info ----

const char* kInfoHelp = R"(usage: moe-ckpt info CKPT [--config]

Prints the checkpoint's step, run id, format version, layout (world size, expert-parallel size,
experts per rank, placement), a summary of its config (model shape, MoE settings, optimizer), the
training state, parameter counts (total, and active per token: each MoE layer's expert tensors
count top_k / E of their size) and, when recorded, each MoE layer's expert usage (share of the
kept tokens per expert over the run).
  --config   print only the full config YAML recorded in the manifest (for moe-train)
)";

std::string yaml_value(const YAML::Node& root, const char* section, const char* key) {
  try {
    const YAML::Node n = root[section][key];
    return n && n.IsScalar() ? n.as<std::string>() : "?";
  } catch (const std::exception&) {
    return "?";
  }
}

int cmd_info(const Args& args) {
  const std::string dir = resolve_checkpoint(args.positional[0]);
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  const checkpoint::Manifest& m = reader->manifest();
  if (args.has("--config")) {
    std::fputs(m.config_yaml().c_str(), stdout);
    return 0;
  }
  std::vector<TensorInfo> tensors;
  check(list_tensors(*reader, &tensors));
  YAML::Node c;
  std::string config_problem;
  try {
    c = YAML::Load(m.config_yaml());
  } catch (const std::exception& e) {
    config_problem = e.what();
  }
  auto v = [&](const char* s, const char* k) { return yaml_value(c, s, k); };
  const checkpoint::Layout& l = m.layout();

  std::printf("checkpoint   %s\n", dir.c_str());
  std::printf("step         %lld\n", static_cast<long long>(m.step()));
  std::printf("run id       %s\n", m.run_id().c_str());
  std::printf("format       version %u (this build reads 1 to %u)\n", m.format_version(), kCheckpointFormatVersion);
  std::printf("layout       %s\n", layout_text(l).c_str());
  std::printf("placement    %s; experts are stored by the first %d ranks\n", l.placement().c_str(), l.ep());

  std::vector<int64_t> moe_layers;
  for (const TensorInfo& t : tensors)
    if (is_parameter(t.name) && ends_with(t.name, ".moe.w_gate") && t.name.rfind("layers.", 0) == 0 &&
        std::isdigit(static_cast<unsigned char>(t.name[7])))
      moe_layers.push_back(std::stoll(t.name.substr(7)));  // "layers.<i>.moe.w_gate": stoll stops at the dot
  std::string moe_list;
  for (int64_t i : moe_layers) moe_list += (moe_list.empty() ? "" : " ") + std::to_string(i);
  if (!config_problem.empty()) {
    std::printf("config       unreadable: %s\n", config_problem.c_str());
  } else {
    std::printf(
        "model        %s layers (MoE: %s), d_model %s, %s heads, vocab %s, seq_len %s, %s, %s positions, "
        "tied embeddings %s\n",
        v("model", "n_layers").c_str(), moe_list.empty() ? "none" : moe_list.c_str(), v("model", "d_model").c_str(),
        v("model", "n_heads").c_str(), v("model", "vocab_size").c_str(), v("model", "seq_len").c_str(),
        v("model", "norm").c_str(), v("model", "positions").c_str(), v("model", "tie_embeddings").c_str());
    std::printf("dense FFN    hidden %s, %s (moe_every %s)\n", v("model", "dense_hidden").c_str(),
                v("model", "dense_activation").c_str(), v("model", "moe_every").c_str());
    std::printf(
        "MoE          %s experts, top_k %s, expert_hidden %s, %s, capacity_factor %s, balancing %s, "
        "shared_experts %s\n",
        v("moe", "num_experts").c_str(), v("moe", "top_k").c_str(), v("moe", "expert_hidden").c_str(),
        v("moe", "activation").c_str(), v("moe", "capacity_factor").c_str(), v("moe", "balancing").c_str(),
        v("moe", "shared_experts").c_str());
    std::printf("optimizer    %s, lr %s (min %s, %s, warmup %s), weight_decay %s, grad_clip %s\n",
                v("optim", "name").c_str(), v("optim", "lr").c_str(), v("optim", "min_lr").c_str(),
                v("optim", "schedule").c_str(), v("optim", "warmup_steps").c_str(), v("optim", "weight_decay").c_str(),
                v("optim", "grad_clip").c_str());
  }
  const checkpoint::TrainingState& s = m.state();
  std::printf("training     optimizer steps %lld, data epoch %llu after %llu sequences, skipped steps %lld\n",
              static_cast<long long>(s.optimizer_steps()), static_cast<unsigned long long>(s.loader_epoch()),
              static_cast<unsigned long long>(s.loader_sequences_done()), static_cast<long long>(s.skipped_steps()));

  // Parameter counts from the tensors themselves: every expert of every MoE layer is stored.
  int64_t total = 0, experts_total = 0;
  for (const TensorInfo& t : tensors) {
    if (!is_parameter(t.name)) continue;
    total += t.numel();
    if (t.expert) experts_total += t.numel();
  }
  const int64_t E = l.num_experts();
  int64_t top_k = -1;
  try {
    top_k = std::stoll(v("moe", "top_k"));
  } catch (const std::exception&) {
  }
  if (top_k >= 0 && E > 0) {
    const int64_t active = total - experts_total + experts_total / E * std::min(top_k, E);
    std::printf("parameters   %lld total, %lld active per token (top_k %lld of %lld experts in %zu MoE layers)\n",
                static_cast<long long>(total), static_cast<long long>(active), static_cast<long long>(top_k),
                static_cast<long long>(E), moe_layers.size());
  } else {
    std::printf("parameters   %lld total\n", static_cast<long long>(total));
  }
  uint64_t bytes = 0;
  for (const auto& e : m.tensors()) bytes += e.length();
  std::printf("stored       %d entries in %zu logical tensors, %s of tensor data in %d shard files\n", m.tensors_size(),
              tensors.size(), human_bytes(bytes).c_str(), m.shards_size());
  if (m.expert_usage_size() == 0) {
    std::printf("expert usage not recorded\n");
    return 0;
  }
  std::printf("expert usage (share of each MoE layer's kept tokens, whole run)\n");
  for (const checkpoint::ExpertUsage& u : m.expert_usage()) {
    int64_t sum = 0;
    for (int64_t t : u.tokens()) sum += t;
    std::printf("  layer %lld:", static_cast<long long>(u.layer()));
    for (int e = 0; e < u.tokens_size(); ++e)
      std::printf("  %d: %.3f", e, sum > 0 ? static_cast<double>(u.tokens(e)) / static_cast<double>(sum) : 0.0);
    std::printf("   (%lld tokens)\n", static_cast<long long>(sum));
  }
  return 0;
}

// ---- tensors ----

const char* kTensorsHelp = R"(usage: moe-ckpt tensors CKPT [--filter REGEX]

One line per stored tensor (expert tensors: one line per expert slice, "[expert N]"): name, shape,
dtype, file@offset, L2 norm, min, max. Every entry is read and its CRC checked; a damaged entry is
reported on its line and the exit status is 1.
  --filter REGEX   only names matching REGEX (ECMAScript syntax, matched anywhere in the name)
)";

struct Stats {
  double norm = 0, min = 0, max = 0;
};

Stats stats_of(const char* bytes, const std::string& dtype, uint64_t n) {
  Stats s;
  s.min = std::numeric_limits<double>::infinity();
  s.max = -s.min;
  double sq = 0;
  for (uint64_t i = 0; i < n; ++i) {
    double x;
    if (dtype == "float32") {
      float f;
      std::memcpy(&f, bytes + 4 * i, 4);
      x = f;
    } else {
      int32_t k;
      std::memcpy(&k, bytes + 4 * i, 4);
      x = k;
    }
    sq += x * x;
    s.min = std::min(s.min, x);
    s.max = std::max(s.max, x);
  }
  s.norm = std::sqrt(sq);
  if (n == 0) s.min = s.max = 0;
  return s;
}

int cmd_tensors(const Args& args) {
  std::regex filter;
  if (args.has("--filter")) {
    try {
      filter = std::regex(args.get("--filter"));
    } catch (const std::regex_error& e) {
      throw InvalidArgument("--filter: '" + args.get("--filter") + "' is not a regular expression: " + e.what());
    }
  }
  const std::string dir = resolve_checkpoint(args.positional[0]);
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  std::vector<TensorInfo> tensors;
  check(list_tensors(*reader, &tensors));
  std::vector<std::vector<std::string>> rows;
  int damaged = 0;
  std::vector<char> buf;
  for (const TensorInfo& t : tensors) {
    if (args.has("--filter") && !std::regex_search(t.name, filter)) continue;
    for (const checkpoint::TensorEntry* e : t.parts) {
      buf.resize(e->length());
      const Status s = reader->read(*e, buf.data());
      std::vector<std::string> row = {
          e->name() + (e->expert() >= 0 ? " [expert " + std::to_string(e->expert()) + "]" : ""), to_string_shape(*e),
          e->dtype(), e->file() + "@" + std::to_string(e->offset())};
      if (s.ok()) {
        const Stats st = stats_of(buf.data(), e->dtype(), e->length() / 4);
        char num[3][32];
        std::snprintf(num[0], sizeof num[0], "norm %.6g", st.norm);
        std::snprintf(num[1], sizeof num[1], "min %.6g", st.min);
        std::snprintf(num[2], sizeof num[2], "max %.6g", st.max);
        row.insert(row.end(), {num[0], num[1], num[2]});
      } else {
        ++damaged;
        row.push_back("DAMAGED: " + s.to_string());
      }
      rows.push_back(row);
    }
  }
  std::vector<size_t> width;
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
  if (damaged > 0) {
    std::fprintf(stderr, "moe-ckpt: %d damaged tensor entr%s in %s\n", damaged, damaged == 1 ? "y" : "ies",
                 dir.c_str());
    return 1;
  }
  return 0;
}

// ---- verify ----

const char* kVerifyHelp = R"(usage: moe-ckpt verify CKPT

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

// ---- diff ----

const char* kDiffHelp = R"(usage: moe-ckpt diff A B

Compares two checkpoints tensor by tensor, whatever layouts they were saved with (expert slices are
reassembled into whole tensors first): tensors only in A or only in B, shape or dtype changes, and
for each common tensor that differs its max absolute difference max|a - b| and max relative
difference max(|a - b| / max(|a|, |b|)). Notes differences of step, run id, layout and config.
Exit status like diff(1): 0 when every tensor is identical, 1 when they differ, 2 on any error.
)";

int cmd_diff(const Args& args) {
  const std::string a_dir = resolve_checkpoint(args.positional[0]), b_dir = resolve_checkpoint(args.positional[1]);
  std::unique_ptr<CheckpointReader> a = open_checkpoint(a_dir), b = open_checkpoint(b_dir);
  std::vector<TensorInfo> at, bt;
  check(list_tensors(*a, &at));
  check(list_tensors(*b, &bt));
  std::map<std::string, const TensorInfo*> in_b;
  for (const TensorInfo& t : bt) in_b[t.name] = &t;
  std::set<std::string> in_a;
  int only_a = 0, only_b = 0, changed = 0, differ = 0, same = 0;
  for (const TensorInfo& ta : at) {
    in_a.insert(ta.name);
    auto it = in_b.find(ta.name);
    if (it == in_b.end()) {
      std::printf("only in A: %s %s\n", ta.name.c_str(), to_string(ta.shape).c_str());
      ++only_a;
      continue;
    }
    const TensorInfo& tb = *it->second;
    if (ta.shape != tb.shape || ta.dtype != tb.dtype) {
      std::printf("shape differs: %s: A %s %s, B %s %s\n", ta.name.c_str(), to_string(ta.shape).c_str(),
                  to_string(ta.dtype), to_string(tb.shape).c_str(), to_string(tb.dtype));
      ++changed;
      continue;
    }
    Tensor x, y;
    check(read_tensor(*a, ta, &x));
    check(read_tensor(*b, tb, &y));
    double max_abs = 0, max_rel = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double p = x.dtype() == DType::F32 ? x.f32()[i] : x.i32()[i];
      const double q = y.dtype() == DType::F32 ? y.f32()[i] : y.i32()[i];
      if (p == q || (std::isnan(p) && std::isnan(q))) continue;
      double d = std::fabs(p - q);
      if (std::isnan(d)) d = std::numeric_limits<double>::infinity();
      max_abs = std::max(max_abs, d);
      max_rel = std::max(max_rel, d / std::max(std::fabs(p), std::fabs(q)));
    }
    if (max_abs == 0) {
      ++same;
      continue;
    }
    ++differ;
    std::printf("differs: %s %s: max abs %.6g, max rel %.6g\n", ta.name.c_str(), to_string(ta.shape).c_str(), max_abs,
                max_rel);
  }
  for (const TensorInfo& tb : bt)
    if (in_a.count(tb.name) == 0) {
      std::printf("only in B: %s %s\n", tb.name.c_str(), to_string(tb.shape).c_str());
      ++only_b;
    }
  const checkpoint::Manifest &ma = a->manifest(), &mb = b->manifest();
  if (ma.step() != mb.step())
    std::printf("note: step %lld in A, %lld in B\n", static_cast<long long>(ma.step()),
                static_cast<long long>(mb.step()));
  if (ma.run_id() != mb.run_id()) std::printf("note: run %s in A, %s in B\n", ma.run_id().c_str(), mb.run_id().c_str());
  if (layout_text(ma.layout()) != layout_text(mb.layout()))
    std::printf("note: layout %s in A, %s in B\n", layout_text(ma.layout()).c_str(), layout_text(mb.layout()).c_str());
  if (ma.config_yaml() != mb.config_yaml()) std::printf("note: the configs differ (moe-ckpt info --config A / B)\n");
  std::printf("%d tensors in common: %d identical, %d differ, %d change shape; %d only in A, %d only in B\n",
              same + differ + changed, same, differ, changed, only_a, only_b);
  return only_a + only_b + changed + differ == 0 ? 0 : 1;
}

// ---- export ----

const char* kExportHelp =
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
  std::vector<TensorInfo> all, chosen;
  check(list_tensors(*reader, &all));
  for (const TensorInfo& t : all)
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
  std::printf("wrote %s: %zu tensors, %s in %zu file%s (%s", out.c_str(), chosen.size(), human_bytes(bytes).c_str(),
              files.size(), files.size() == 1 ? "" : "s", files[0].c_str());
  std::printf("%s)\n", files.size() > 1 ? (", ..., " + files.back()).c_str() : "");
  return 0;
}

// ---- writing commands ----

// The layout of a rewritten checkpoint: --ep / --world-size, else the source's when it still fits.
void choose_layout(const Args& args, const CheckpointData& data, int* world_size, int* ep) {
  const checkpoint::Layout& src = data.header.layout();
  *ep = args.has("--ep") ? static_cast<int>(parse_int("--ep", args.get("--ep"))) : src.ep();
  *world_size = args.has("--world-size") ? static_cast<int>(parse_int("--world-size", args.get("--world-size")))
                : args.has("--ep")       ? *ep
                                         : src.world_size();
  MOE_REQUIRE(*ep >= 1, "--ep ", *ep, " must be >= 1");
  MOE_REQUIRE(*world_size >= 1, "--world-size ", *world_size, " must be >= 1");
  MOE_REQUIRE(*world_size % *ep == 0, "--ep ", *ep, " must divide the world size ", *world_size,
              args.has("--world-size") ? " (--world-size)" : " (the checkpoint's)");
  const int64_t E = data.config.moe.num_experts;
  MOE_REQUIRE(E % *ep == 0, "the result has ", E, " experts per MoE layer, which is not divisible by ",
              args.has("--ep") ? "--ep " : "the checkpoint's ep = ", *ep,
              args.has("--ep") ? "" : "; pass --ep N (and --world-size W) for the result's layout");
}

void report_written(const std::string& out, const CheckpointData& data, int world_size, int ep,
                    const std::vector<std::string>& notes) {
  for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
  std::printf("wrote %s: step %lld, run %s, %lld experts (top_k %lld), world size %d, ep %d\n", out.c_str(),
              static_cast<long long>(data.header.step()), data.header.run_id().c_str(),
              static_cast<long long>(data.config.moe.num_experts), static_cast<long long>(data.config.moe.top_k),
              world_size, ep);
  const uint64_t global_batch = static_cast<uint64_t>(world_size * data.config.data.batch_size);
  if (data.header.state().loader_sequences_done() % global_batch != 0)
    std::printf(
        "note: the data position (%llu sequences into the epoch) is not a whole number of global batches of "
        "%d ranks x data.batch_size %lld: moe-train needs a batch size whose global batch divides it\n",
        static_cast<unsigned long long>(data.header.state().loader_sequences_done()), world_size,
        static_cast<long long>(data.config.data.batch_size));
  std::printf(
      "train from it: moe-ckpt info %s --config > config.yaml; mpirun -np %d moe-train config.yaml "
      "checkpoint.init_from=%s run.dir=... (run.steps beyond %lld)\n",
      out.c_str(), world_size, out.c_str(), static_cast<long long>(data.header.step()));
}

const char* kReshardHelp = R"(usage: moe-ckpt reshard CKPT --ep N [--world-size W] OUT

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
  const int ep = static_cast<int>(parse_int("--ep", args.get("--ep")));
  const int world =
      args.has("--world-size") ? static_cast<int>(parse_int("--world-size", args.get("--world-size"))) : ep;
  MOE_REQUIRE(ep >= 1, "--ep ", ep, " must be >= 1");
  MOE_REQUIRE(world >= 1 && world % ep == 0, "--ep ", ep, " must divide the world size ", world,
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

const char* kPruneHelp =
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
      keep.push_back(parse_int("--keep", list.substr(start, comma - start)));
      start = comma + 1;
    }
    std::sort(keep.begin(), keep.end());
  }
  const double min_usage = args.has("--min-usage") ? parse_double("--min-usage", args.get("--min-usage")) : 0;
  MOE_REQUIRE(min_usage >= 0 && min_usage <= 1, "--min-usage ", min_usage, " must be a share in [0, 1]");
  CheckpointData data = load_checkpoint_data(resolve_checkpoint(args.positional[0]));
  std::vector<std::string> notes;
  if (args.has("--min-usage")) {
    keep = experts_with_usage(data, min_usage);
    std::string ids;
    for (int64_t e : keep) ids += (ids.empty() ? "" : ",") + std::to_string(e);
    notes.push_back("experts with a usage share >= " + args.get("--min-usage") +
                    " in some MoE layer: " + (ids.empty() ? "none" : ids));
  }
  const int64_t before = data.config.moe.num_experts;
  prune_experts(data, keep, &notes);
  notes.push_back("kept " + std::to_string(keep.size()) + " of " + std::to_string(before) + " experts");
  int world = 0, ep = 0;
  choose_layout(args, data, &world, &ep);
  write_checkpoint_data(data, world, ep, out);
  report_written(out, data, world, ep, notes);
  return 0;
}

const char* kAddHelp =
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
  const int64_t count = parse_int("--count", args.get("--count"));
  MOE_REQUIRE(count >= 1, "--count ", count, " must be >= 1");
  int64_t from = args.has("--from") ? parse_int("--from", args.get("--from")) : 0;
  MOE_REQUIRE(from >= 0, "--from ", from, " must be an expert id >= 0");
  if (args.has("--fresh")) from = -1;
  CheckpointData data = load_checkpoint_data(resolve_checkpoint(args.positional[0]));
  const uint64_t seed =
      static_cast<uint64_t>(args.has("--seed") ? parse_int("--seed", args.get("--seed")) : data.config.run.seed);
  std::vector<std::string> notes;
  add_experts(data, count, from, seed, &notes);
  int world = 0, ep = 0;
  choose_layout(args, data, &world, &ep);
  write_checkpoint_data(data, world, ep, out);
  report_written(out, data, world, ep, notes);
  return 0;
}

const char* kUpcycleHelp =
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
  const int64_t experts = parse_int("--experts", args.get("--experts"));
  const int64_t every = args.has("--moe-every") ? parse_int("--moe-every", args.get("--moe-every")) : 1;
  MOE_REQUIRE(experts >= 1, "--experts ", experts, " must be >= 1");
  MOE_REQUIRE(every >= 1, "--moe-every ", every, " must be >= 1");
  CheckpointData data = load_checkpoint_data(resolve_checkpoint(args.positional[0]));
  const uint64_t seed =
      static_cast<uint64_t>(args.has("--seed") ? parse_int("--seed", args.get("--seed")) : data.config.run.seed);
  std::vector<std::string> notes;
  upcycle(data, experts, every, seed, &notes);
  int world = 0, ep = 0;
  choose_layout(args, data, &world, &ep);
  write_checkpoint_data(data, world, ep, out);
  report_written(out, data, world, ep, notes);
  return 0;
}

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
