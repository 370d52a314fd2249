// The launch of a moe-train job resolved from its config (launch:, scheduler:, run.threads_per_rank,
// parallel.ep), and every check that must pass before anything starts. Shared by moe-run and
// moe-submit (docs/launch.md).
//
// Every check throws InvalidArgument with a message that names the setting(s) involved, their
// values and what would be accepted. Nothing here starts a process; the only outside state read is
// the file system (does launch.hostfile exist?).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "launch/config/launch_values.h"
#include "launch/config/train_config.h"

namespace moe {

// How many cores a node has, and where that figure came from (for messages): "this machine", "--cpus",
// "sinfo (partition debug)".
struct NodeCores {
  int cores = 1;
  std::string source;
};

struct LaunchPlan {
  int ranks = 1;
  int ranks_per_node = 0;  // ranks on each node; 0 = placed by the hosts' slots (hosts or hostfile)
  int threads_per_rank = 1;
  std::vector<HostSlots> hosts;
  std::string hostfile;  // absolute, or empty
  std::vector<EnvSetting> env;
  std::vector<std::string> extra_args;
};

// The launch by moe-run of `cfg` on nodes of `cores` cores (unknown: no core check). Checks:
// parallel.ep divides launch.ranks and moe.num_experts; launch.ranks is a multiple of
// launch.ranks_per_node; ranks per node x run.threads_per_rank fit the cores unless
// launch.oversubscribe; launch.hosts and launch.hostfile are not both given; the hostfile exists;
// the hosts have enough slots (and enough hosts for launch.ranks_per_node); launch.launcher = srun
// takes no hosts.
LaunchPlan plan_launch(const TrainConfig& cfg, const std::optional<NodeCores>& cores);

enum class Scheduler { Slurm, Pbs };
const char* scheduler_name(Scheduler s);  // "slurm", "pbs"

struct JobPlan {
  LaunchPlan launch;
  int nodes = 1;
  int tasks_per_node = 1;
  int cpus_per_task = 1;
  int gpus_per_node = 0;
  int64_t time_limit_s = 0;
  std::string job_name;
  std::string run_dir;  // absolute
  std::string output;   // absolute; Slurm's may hold %j
  std::string error;    // absolute, or empty: with the output
};

// The batch job moe-submit writes for `cfg`, with relative paths resolved against `workdir`
// (absolute). Besides plan_launch's checks (without its core check): scheduler.nodes x
// scheduler.tasks_per_node (0s derived from launch) equal launch.ranks; tasks_per_node x
// cpus_per_task fit `cores` unless launch.oversubscribe; cpus_per_task >= run.threads_per_rank;
// one GPU per rank when gpus_per_node > 0; signal_seconds_before_end < time_limit; no hosts or
// hostfile (the scheduler picks the nodes); Slurm takes partition (not queue) and PBS queue (not
// partition), and srun only under Slurm.
JobPlan plan_job(const TrainConfig& cfg, Scheduler scheduler, const std::optional<NodeCores>& cores,
                 const std::string& workdir);

}  // namespace moe
