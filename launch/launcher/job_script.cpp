// Writing the Slurm and PBS scripts of a moe-train job (launch/launcher/job_script.h).
#include "launch/launcher/job_script.h"

#include <cstdio>
#include <sstream>

namespace moe {
namespace {

// The hostfile PBS writes for each job, as a placeholder that survives shell quoting.
constexpr const char* kPbsNodefilePlaceholder = "@PBS_NODEFILE@";

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

// "HH:MM:SS" with hours as many digits as needed.
std::string hms(int64_t seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", static_cast<long long>(seconds / 3600),
                static_cast<long long>(seconds / 60 % 60), static_cast<long long>(seconds % 60));
  return buf;
}

// The part after the directives: cd, the signal trap, the launch, and what to do when it ends.
// `requeue_command` is the line that puts the job back in the queue ("" = requeue off).
std::string script_body(const TrainConfig& cfg, const JobPlan& plan, const JobScriptInputs& in,
                        const std::string& launch, const std::string& requeue_command) {
  std::ostringstream os;
  os << "set -u\n"
     << "# Relative paths in the config and the overrides are relative to where moe-submit ran.\n"
     << "cd " << shell_quote(in.workdir) << " || exit 1\n"
     << "run_dir=" << shell_quote(plan.run_dir) << "\n\n"
     << "# moe-train writes $run_dir/" << kDoneMarker << " after its last step (run.steps = " << cfg.run.steps
     << ") and removes it when it\n"
     << "# resumes the run to train on (docs/run-directory.md): a marker after it exits is this start's outcome.\n"
     << "echo \"moe-submit job: starting at $(date) on $(hostname)\"\n\n"
     << "# The stop signal: the scheduler sends it to this shell (Slurm: USR1 before the time limit, as\n"
     << "# asked above; scancel; preemption and PBS: TERM). It goes on to the ranks as USR1 (mpirun and srun\n"
     << "# forward USR1 to every rank), on which every rank finishes its step, saves a checkpoint and exits 0.\n"
     << "launcher_pid=\"\"\n"
     << "stop() {\n"
     << "  echo \"moe-submit job: got $1 at $(date); asking the ranks to save a checkpoint and stop\"\n"
     << "  [ -z \"$launcher_pid\" ] || kill -USR1 \"$launcher_pid\" 2>/dev/null\n"
     << "}\n"
     << "trap 'stop USR1' USR1\n"
     << "trap 'stop TERM' TERM\n\n"
     << "# The ranks: " << plan.launch.ranks << " in all, " << plan.tasks_per_node << " per node, "
     << plan.launch.threads_per_rank << " thread(s) each (run.threads_per_rank). checkpoint.resume=auto makes every\n"
     << "# start continue from the newest complete checkpoint in the run's checkpoint directory.\n"
     << launch << " &\n"
     << "launcher_pid=$!\n"
     << "# wait also returns when a trapped signal arrives: wait on until the launcher has exited.\n"
     << "while kill -0 \"$launcher_pid\" 2>/dev/null; do wait \"$launcher_pid\"; done\n"
     << "wait \"$launcher_pid\"\n"
     << "status=$?\n\n"
     << "if [ -e \"$run_dir/" << kDoneMarker << "\" ]; then\n"
     << "  echo \"moe-submit job: the run is complete ($run_dir)\"\n"
     << "  exit 0\n"
     << "fi\n"
     << "if [ \"$status\" -ne 0 ]; then\n"
     << "  echo \"moe-submit job: moe-train failed with exit status $status; not requeued (see the output above)\"\n"
     << "  exit \"$status\"\n"
     << "fi\n"
     << "# moe-train exited 0 before its last step: a stop signal made it save a checkpoint.\n";
  if (requeue_command.empty()) {
    os << "# scheduler.requeue = false: submit the job again (or rerun moe-submit) to resume.\n"
       << "echo \"moe-submit job: stopped early with a checkpoint; submit again to resume\"\n"
       << "exit 0\n";
  } else {
    os << "# scheduler.requeue = true: back into the queue; the next start resumes from the checkpoint.\n"
       << "echo \"moe-submit job: stopped early with a checkpoint; requeueing\"\n"
       << requeue_command << "\n"
       << "exit 0\n";
  }
  return os.str();
}

TrainInvocation resuming(const TrainInvocation& train) {
  TrainInvocation t = train;
  t.overrides.push_back("checkpoint.resume=auto");
  return t;
}

std::string slurm_script(const TrainConfig& cfg, const JobPlan& plan, const JobScriptInputs& in) {
  const SchedulerConfig& s = cfg.scheduler;
  CommandContext context;
  context.as_root = in.as_root;
  context.in_allocation = true;
  const std::string launch =
      shell_lines(launch_command(cfg, plan.launch, resuming(in.train), context, plan.cpus_per_task), "    ");
  std::ostringstream os;
  os << "#!/bin/bash\n"
     << "# Slurm job of the moe-train run '" << cfg.run.name << "', written by moe-submit from " << in.config_source
     << ".\n"
     << "# Submit: sbatch " << in.script_path << "   (moe-submit rewrites this file each time it runs;\n"
     << "# edit it by hand if you like, then submit it with sbatch yourself).\n"
     << "#\n"
     << "# Every start resumes from the newest complete checkpoint (checkpoint.resume=auto): a requeued job,\n"
     << "# or the same config submitted again, continues where the last one stopped.\n";
  if (s.signal_seconds_before_end > 0)
    os << "# " << s.signal_seconds_before_end
       << " s before the time limit Slurm sends USR1 to this script, which passes it to the ranks:\n"
       << "# they save a checkpoint and exit, and the job "
       << (s.requeue ? "requeues itself." : "ends (scheduler.requeue = false).") << "\n";
  os << "#\n"
     << "#SBATCH --job-name=" << plan.job_name << "\n"
     << "#SBATCH --nodes=" << plan.nodes << "\n"
     << "#SBATCH --ntasks-per-node=" << plan.tasks_per_node << "\n"
     << "#SBATCH --cpus-per-task=" << plan.cpus_per_task << "\n";
  if (plan.gpus_per_node > 0) os << "#SBATCH --gres=gpu:" << plan.gpus_per_node << "\n";
  os << "#SBATCH --time=" << hms(plan.time_limit_s) << "\n";
  if (!s.partition.empty()) os << "#SBATCH --partition=" << s.partition << "\n";
  if (!s.account.empty()) os << "#SBATCH --account=" << s.account << "\n";
  os << "#SBATCH --output=" << plan.output << "\n";
  if (!plan.error.empty()) os << "#SBATCH --error=" << plan.error << "\n";
  os << "# A requeued job appends to the same output file.\n"
     << "#SBATCH --open-mode=append\n";
  if (s.signal_seconds_before_end > 0)
    os << "# B: the signal goes to this batch shell (the trap below), which forwards it to the ranks.\n"
       << "#SBATCH --signal=B:USR1@" << s.signal_seconds_before_end << "\n";
  os << (s.requeue ? "#SBATCH --requeue\n" : "#SBATCH --no-requeue\n") << "\n";
  os << "echo \"moe-submit job: Slurm job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on "
        "${SLURM_JOB_NODELIST}\"\n";
  os << script_body(cfg, plan, in, launch, s.requeue ? "scontrol requeue \"$SLURM_JOB_ID\"" : "");
  return os.str();
}

std::string pbs_script(const TrainConfig& cfg, const JobPlan& plan, const JobScriptInputs& in) {
  const SchedulerConfig& s = cfg.scheduler;
  CommandContext context;
  context.as_root = in.as_root;
  context.in_allocation = true;
  context.hostfile_override = kPbsNodefilePlaceholder;
  const std::string launch = replace_all(
      shell_lines(launch_command(cfg, plan.launch, resuming(in.train), context, plan.cpus_per_task), "    "),
      kPbsNodefilePlaceholder, "\"$PBS_NODEFILE\"");
  std::ostringstream os;
  os << "#!/bin/bash\n"
     << "# PBS job of the moe-train run '" << cfg.run.name << "', written by moe-submit from " << in.config_source
     << ".\n"
     << "# Submit: qsub " << in.script_path << "   (moe-submit rewrites this file each time it runs;\n"
     << "# edit it by hand if you like, then submit it with qsub yourself).\n"
     << "#\n"
     << "# Every start resumes from the newest complete checkpoint (checkpoint.resume=auto): a resubmitted\n"
     << "# job continues where the last one stopped. At the walltime PBS sends TERM to this script, which\n"
     << "# passes USR1 to the ranks: they save a checkpoint and exit (within PBS's kill_delay, before KILL)"
     << (s.requeue ? ",\n# and the script submits itself again." : ".") << "\n"
     << "#\n"
     << "#PBS -N " << plan.job_name << "\n"
     << "# " << plan.nodes << " node(s), each with " << plan.tasks_per_node << " rank(s) x " << plan.cpus_per_task
     << " core(s)" << (plan.gpus_per_node > 0 ? " and " + std::to_string(plan.gpus_per_node) + " GPU(s)" : "") << ".\n"
     << "#PBS -l select=" << plan.nodes << ":ncpus=" << plan.tasks_per_node * plan.cpus_per_task
     << ":mpiprocs=" << plan.tasks_per_node << ":ompthreads=" << plan.launch.threads_per_rank;
  if (plan.gpus_per_node > 0) os << ":ngpus=" << plan.gpus_per_node;
  os << "\n";
  if (plan.nodes > 1) os << "#PBS -l place=scatter\n";
  os << "#PBS -l walltime=" << hms(plan.time_limit_s) << "\n";
  if (!s.queue.empty()) os << "#PBS -q " << s.queue << "\n";
  if (!s.account.empty()) os << "#PBS -A " << s.account << "\n";
  os << "#PBS -o " << plan.output << "\n";
  if (plan.error.empty())
    os << "#PBS -j oe\n";
  else
    os << "#PBS -e " << plan.error << "\n";
  os << (s.requeue ? "#PBS -r y\n" : "#PBS -r n\n") << "\n";
  os << "echo \"moe-submit job: PBS job ${PBS_JOBID:-?}\"\n";
  os << script_body(cfg, plan, in, launch, s.requeue ? "qsub " + shell_quote(in.script_path) : "");
  return os.str();
}

}  // namespace

std::string job_script_path(const JobPlan& plan, Scheduler scheduler) {
  return plan.run_dir + (scheduler == Scheduler::Slurm ? "/job.sbatch" : "/job.pbs");
}

std::string job_script(const TrainConfig& cfg, const JobPlan& plan, Scheduler scheduler, const JobScriptInputs& in) {
  return scheduler == Scheduler::Slurm ? slurm_script(cfg, plan, in) : pbs_script(cfg, plan, in);
}

}  // namespace moe
