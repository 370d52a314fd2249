// Resolving and checking the launch settings of a config (launch/launcher/launch_plan.h).
#include "launch/launcher/launch_plan.h"

#include <filesystem>
#include <string>

#include "core/check.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

std::string quoted_value(const std::string& s) { return "'" + s + "'"; }

// "launch.ranks_per_node = 4" or, when it is 0 and every rank is on one node, "launch.ranks = 4 on one
// node (launch.ranks_per_node = 0)": the setting that decides how many ranks share a node.
std::string ranks_per_node_setting(const TrainConfig& cfg, int per_node) {
  if (cfg.launch.ranks_per_node > 0) return "launch.ranks_per_node = " + std::to_string(per_node);
  return "launch.ranks = " + std::to_string(per_node) + " (all on one node: launch.ranks_per_node = 0)";
}

// Ranks x threads on one node must fit its cores, unless oversubscription is asked for.
void check_cores(const TrainConfig& cfg, int per_node, const std::string& per_node_setting, int threads,
                 const std::string& threads_setting, const std::optional<NodeCores>& cores) {
  if (!cores || cfg.launch.oversubscribe || per_node <= 0) return;
  const std::string fix = "; lower it, or set launch.oversubscribe=true to run anyway (slower)";
  MOE_REQUIRE(per_node <= cores->cores, per_node_setting, " is more ranks per node than a node has cores (",
              cores->cores, ", from ", cores->source, ")", fix);
  MOE_REQUIRE(static_cast<int64_t>(per_node) * threads <= cores->cores, per_node_setting, " x ", threads_setting,
              " needs ", static_cast<int64_t>(per_node) * threads, " cores per node, more than a node has (",
              cores->cores, ", from ", cores->source, ")", fix);
}

// The checks and values common to moe-run and moe-submit.
LaunchPlan plan_common(const TrainConfig& cfg) {
  const LaunchConfig& l = cfg.launch;
  LaunchPlan p;
  p.ranks = static_cast<int>(l.ranks);
  p.ranks_per_node = static_cast<int>(l.ranks_per_node);
  p.threads_per_rank = static_cast<int>(cfg.run.threads_per_rank);
  MOE_REQUIRE(l.ranks_per_node <= l.ranks, "launch.ranks_per_node = ", l.ranks_per_node,
              " is more than launch.ranks = ", l.ranks);

  validate_for_world(cfg, p.ranks, "launch.ranks =");

  MOE_REQUIRE(l.ranks_per_node == 0 || l.ranks % l.ranks_per_node == 0, "launch.ranks = ", l.ranks,
              " is not a multiple of launch.ranks_per_node = ", l.ranks_per_node,
              " (every node runs the same number of ranks)");
  MOE_ASSERT(parse_host_list(l.hosts, &p.hosts), "validate_for_world checked launch.hosts");
  MOE_ASSERT(parse_env_list(l.env, &p.env), "validate_for_world checked launch.env");
  p.extra_args = split_words(l.extra_args);
  if (l.launcher == LauncherKind::Srun) {
    for (const EnvSetting& e : p.env)
      MOE_REQUIRE(e.value.find(',') == std::string::npos, "launch.env: ", e.name, "=", e.value,
                  " holds a comma, which srun --export cannot pass; with launch.launcher = srun, export it "
                  "before starting instead");
  }
  return p;
}

}  // namespace

LaunchPlan plan_launch(const TrainConfig& cfg, const std::optional<NodeCores>& cores) {
  const LaunchConfig& l = cfg.launch;
  LaunchPlan p = plan_common(cfg);
  MOE_REQUIRE(l.hosts.empty() || l.hostfile.empty(), "launch.hosts = ", quoted_value(l.hosts),
              " and launch.hostfile = ", quoted_value(l.hostfile), " are both set; give one of them");
  if (l.launcher == LauncherKind::Srun)
    MOE_REQUIRE(l.hosts.empty() && l.hostfile.empty(),
                "launch.launcher = srun runs on the nodes of the Slurm allocation: leave launch.hosts and "
                "launch.hostfile empty");
  if (!l.hostfile.empty()) {
    std::error_code ec;
    const fs::path path = fs::absolute(l.hostfile, ec);
    MOE_REQUIRE(!ec && fs::exists(path, ec), "launch.hostfile = ", quoted_value(l.hostfile), " does not exist");
    MOE_REQUIRE(fs::is_regular_file(path, ec), "launch.hostfile = ", quoted_value(l.hostfile),
                " is not a regular file");
    p.hostfile = path.string();
  }
  if (!p.hosts.empty()) {
    int slots = 0;
    for (const HostSlots& h : p.hosts) slots += h.slots;
    if (p.ranks_per_node > 0) {
      const int64_t nodes = l.ranks / l.ranks_per_node;
      MOE_REQUIRE(static_cast<int64_t>(p.hosts.size()) >= nodes, "launch.ranks = ", l.ranks,
                  " at launch.ranks_per_node = ", l.ranks_per_node, " needs ", nodes, " hosts, but launch.hosts names ",
                  p.hosts.size());
    } else {
      MOE_REQUIRE(slots >= l.ranks || l.oversubscribe, "launch.hosts = ", quoted_value(l.hosts), " has ", slots,
                  " slots, fewer than launch.ranks = ", l.ranks,
                  "; add hosts or slots, or set launch.oversubscribe=true");
    }
  }
  // Without hosts every rank runs here; with hosts and ranks_per_node = 0 the slots decide.
  const bool one_node = p.hosts.empty() && p.hostfile.empty() && p.ranks_per_node == 0;
  const int per_node = one_node ? p.ranks : p.ranks_per_node;
  check_cores(cfg, per_node, ranks_per_node_setting(cfg, per_node), p.threads_per_rank,
              "run.threads_per_rank = " + std::to_string(p.threads_per_rank), cores);
  return p;
}

const char* scheduler_name(Scheduler s) { return s == Scheduler::Slurm ? "slurm" : "pbs"; }

JobPlan plan_job(const TrainConfig& cfg, Scheduler scheduler, const std::optional<NodeCores>& cores,
                 const std::string& workdir) {
  const LaunchConfig& l = cfg.launch;
  const SchedulerConfig& s = cfg.scheduler;
  JobPlan j;
  j.launch = plan_common(cfg);
  MOE_REQUIRE(l.hosts.empty() && l.hostfile.empty(), "launch.hosts = ", quoted_value(l.hosts),
              " / launch.hostfile = ", quoted_value(l.hostfile),
              ": in a batch job the scheduler picks the nodes; leave both empty (e.g. launch.hosts= launch.hostfile=)");
  if (scheduler == Scheduler::Slurm) {
    MOE_REQUIRE(s.queue.empty(), "scheduler.queue = ", quoted_value(s.queue),
                " is for PBS; Slurm takes scheduler.partition");
  } else {
    MOE_REQUIRE(s.partition.empty(), "scheduler.partition = ", quoted_value(s.partition),
                " is for Slurm; PBS takes scheduler.queue");
    MOE_REQUIRE(l.launcher == LauncherKind::Mpirun, "launch.launcher = srun needs Slurm; use mpirun with PBS");
  }

  // Nodes and tasks per node: given, or derived from launch; either way they must give launch.ranks.
  std::string tasks_setting;
  if (s.tasks_per_node > 0) {
    j.tasks_per_node = static_cast<int>(s.tasks_per_node);
    tasks_setting = "scheduler.tasks_per_node = " + std::to_string(s.tasks_per_node);
    MOE_REQUIRE(l.ranks_per_node == 0 || l.ranks_per_node == s.tasks_per_node,
                "scheduler.tasks_per_node = ", s.tasks_per_node,
                " differs from launch.ranks_per_node = ", l.ranks_per_node, "; set one of them (or both alike)");
  } else if (s.nodes > 0 && l.ranks_per_node == 0) {
    j.tasks_per_node = static_cast<int>(l.ranks / s.nodes);
    tasks_setting = "launch.ranks / scheduler.nodes = " + std::to_string(j.tasks_per_node) + " ranks per node";
    MOE_REQUIRE(l.ranks % s.nodes == 0, "launch.ranks = ", l.ranks,
                " does not split evenly over scheduler.nodes = ", s.nodes);
  } else {
    j.tasks_per_node = static_cast<int>(l.ranks_per_node > 0 ? l.ranks_per_node : l.ranks);
    tasks_setting = ranks_per_node_setting(cfg, j.tasks_per_node);
  }
  j.nodes = static_cast<int>(s.nodes > 0 ? s.nodes : (l.ranks + j.tasks_per_node - 1) / j.tasks_per_node);
  MOE_REQUIRE(static_cast<int64_t>(j.nodes) * j.tasks_per_node == l.ranks, "scheduler.nodes = ", j.nodes,
              (s.nodes > 0 ? "" : " (derived)"), " x ", tasks_setting, " gives ",
              static_cast<int64_t>(j.nodes) * j.tasks_per_node, " ranks, but launch.ranks = ", l.ranks,
              "; make them agree (0 derives scheduler.nodes and scheduler.tasks_per_node from launch)");
  j.launch.ranks_per_node = j.tasks_per_node;

  j.cpus_per_task = static_cast<int>(s.cpus_per_task > 0 ? s.cpus_per_task : cfg.run.threads_per_rank);
  MOE_REQUIRE(j.cpus_per_task >= cfg.run.threads_per_rank, "scheduler.cpus_per_task = ", s.cpus_per_task,
              " is less than run.threads_per_rank = ", cfg.run.threads_per_rank,
              " (each rank needs a core per thread); raise it, or leave it 0 to follow run.threads_per_rank");
  check_cores(cfg, j.tasks_per_node, tasks_setting, j.cpus_per_task,
              s.cpus_per_task > 0 ? "scheduler.cpus_per_task = " + std::to_string(j.cpus_per_task)
                                  : "run.threads_per_rank = " + std::to_string(j.cpus_per_task),
              cores);
  j.gpus_per_node = static_cast<int>(s.gpus_per_node);
  MOE_REQUIRE(j.gpus_per_node == 0 || j.tasks_per_node <= j.gpus_per_node, tasks_setting,
              " is more ranks per node than scheduler.gpus_per_node = ", j.gpus_per_node,
              " GPUs; each rank needs a GPU of its own");

  MOE_ASSERT(parse_time_limit(s.time_limit, &j.time_limit_s), "validate_for_world checked scheduler.time_limit");
  MOE_REQUIRE(s.signal_seconds_before_end < j.time_limit_s,
              "scheduler.signal_seconds_before_end = ", s.signal_seconds_before_end,
              " is not less than scheduler.time_limit = ", s.time_limit, " (", j.time_limit_s,
              " s); lower it, or raise the time limit");

  const fs::path work(workdir);
  auto absolute = [&](const std::string& p) { return (work / p).lexically_normal().string(); };
  j.run_dir = absolute(cfg.run.dir);
  if (!j.run_dir.empty() && j.run_dir.back() == '/') j.run_dir.pop_back();
  j.job_name = s.job_name.empty() ? cfg.run.name : s.job_name;
  const std::string default_output = scheduler == Scheduler::Slurm ? "slurm-%j.out" : "job.out";
  j.output = s.output.empty() ? (fs::path(j.run_dir) / default_output).string() : absolute(s.output);
  j.error = s.error.empty() ? "" : absolute(s.error);
  return j;
}

}  // namespace moe
