// Building the mpirun and srun command lines of a launch (launch/launcher/command.h).
#include "launch/launcher/command.h"

#include <cctype>

namespace moe {
namespace {

std::vector<std::string> train_words(const TrainInvocation& train) {
  std::vector<std::string> words = {train.moe_train, train.config};
  words.insert(words.end(), train.overrides.begin(), train.overrides.end());
  return words;
}

}  // namespace

CommandGroups mpirun_command(const TrainConfig& cfg, const LaunchPlan& plan, const TrainInvocation& train,
                             const CommandContext& context) {
  CommandGroups g;
  g.push_back({"mpirun", "-np", std::to_string(plan.ranks)});
  if (context.as_root) g.push_back({"--allow-run-as-root"});
  const bool oversubscribe = cfg.launch.oversubscribe;
  if (oversubscribe) g.push_back({"--oversubscribe"});
  if (!context.hostfile_override.empty()) {
    g.push_back({"--hostfile", context.hostfile_override});
  } else if (!context.in_allocation) {
    if (!plan.hosts.empty()) {
      std::string hosts;
      for (const HostSlots& h : plan.hosts) {
        if (!hosts.empty()) hosts += ',';
        hosts += h.host + ":" + std::to_string(h.slots);
      }
      g.push_back({"--host", hosts});
    } else if (!plan.hostfile.empty()) {
      g.push_back({"--hostfile", plan.hostfile});
    }
  }
  const BindMode bind = oversubscribe ? BindMode::None : cfg.launch.bind;
  std::string map = plan.ranks_per_node > 0 ? "ppr:" + std::to_string(plan.ranks_per_node) + ":node" : "slot";
  if (bind == BindMode::Core && plan.threads_per_rank > 1) map += ":PE=" + std::to_string(plan.threads_per_rank);
  g.push_back({"--map-by", map});
  g.push_back({"--bind-to", bind == BindMode::Core ? "core" : bind == BindMode::Socket ? "socket" : "none"});
  g.push_back({"-x", "OMP_NUM_THREADS=" + std::to_string(plan.threads_per_rank)});
  for (const EnvSetting& e : plan.env) g.push_back({"-x", e.has_value ? e.name + "=" + e.value : e.name});
  if (!plan.extra_args.empty()) g.push_back(plan.extra_args);
  g.push_back(train_words(train));
  return g;
}

CommandGroups srun_command(const TrainConfig& cfg, const LaunchPlan& plan, const TrainInvocation& train,
                           int cpus_per_task) {
  CommandGroups g;
  g.push_back({"srun", "--mpi=pmix", "--ntasks=" + std::to_string(plan.ranks)});
  if (plan.ranks_per_node > 0) g.push_back({"--ntasks-per-node=" + std::to_string(plan.ranks_per_node)});
  g.push_back({"--cpus-per-task=" + std::to_string(cpus_per_task)});
  const BindMode bind = cfg.launch.oversubscribe ? BindMode::None : cfg.launch.bind;
  if (cfg.launch.oversubscribe) g.push_back({"--overcommit"});
  g.push_back({std::string("--cpu-bind=") + (bind == BindMode::Core     ? "cores"
                                             : bind == BindMode::Socket ? "sockets"
                                                                        : "none")});
  // ALL: every variable of the launching shell; NAME alone is already among them.
  std::string exports = "--export=ALL,OMP_NUM_THREADS=" + std::to_string(plan.threads_per_rank);
  for (const EnvSetting& e : plan.env)
    if (e.has_value) exports += "," + e.name + "=" + e.value;
  g.push_back({exports});
  if (!plan.extra_args.empty()) g.push_back(plan.extra_args);
  g.push_back(train_words(train));
  return g;
}

CommandGroups launch_command(const TrainConfig& cfg, const LaunchPlan& plan, const TrainInvocation& train,
                             const CommandContext& context, int cpus_per_task) {
  if (cfg.launch.launcher == LauncherKind::Srun) return srun_command(cfg, plan, train, cpus_per_task);
  return mpirun_command(cfg, plan, train, context);
}

std::vector<std::string> flatten(const CommandGroups& groups) {
  std::vector<std::string> words;
  for (const auto& group : groups) words.insert(words.end(), group.begin(), group.end());
  return words;
}

std::string shell_quote(const std::string& word) {
  bool safe = !word.empty();
  for (char c : word) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '@' || c == '%' || c == '+' ||
                    c == '=' || c == ':' || c == ',' || c == '.' || c == '/' || c == '-';
    safe = safe && ok;
  }
  if (safe) return word;
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

namespace {
// The words of a group, quoted, separated by spaces.
std::string quoted_words(const std::vector<std::string>& words) {
  std::string line;
  for (const std::string& word : words) {
    if (!line.empty()) line += ' ';
    line += shell_quote(word);
  }
  return line;
}
}  // namespace

std::string shell_line(const CommandGroups& groups) { return quoted_words(flatten(groups)); }

std::string shell_lines(const CommandGroups& groups, const std::string& indent) {
  std::string text;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (i > 0) text += " \\\n" + indent;
    text += quoted_words(groups[i]);
  }
  return text;
}

}  // namespace moe
