// moe-submit: writes a Slurm or PBS batch script for a moe-train config into its run directory and
// submits it. moe-submit CONFIG.yaml --scheduler slurm|pbs [--dry-run] [--cpus N] [key.path=value ...]
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "launch/config/train_config.h"
#include "launch/launcher/cli.h"
#include "launch/launcher/command.h"
#include "launch/launcher/job_script.h"
#include "launch/launcher/launch_plan.h"

namespace {

const char* kUsage = R"(usage: moe-submit CONFIG.yaml --scheduler slurm|pbs [--dry-run] [--cpus N] [key.path=value ...]

Writes a batch script for the moe-train run CONFIG.yaml describes into its run directory
(<run.dir>/job.sbatch for Slurm, <run.dir>/job.pbs for PBS) and submits it with sbatch or qsub
(docs/launch.md). The script is plain, commented bash: read it, edit it, submit it again by hand.
key.path=value arguments override config keys; they are passed on to moe-train in the script.

The job asks for scheduler.nodes nodes with scheduler.tasks_per_node ranks each (both derived from
launch.ranks and launch.ranks_per_node when 0), scheduler.cpus_per_task cores per rank (default
run.threads_per_rank), scheduler.gpus_per_node GPUs, scheduler.time_limit, and starts the ranks
with mpirun or srun (launch.launcher). moe-train always runs with checkpoint.resume=auto, so a
requeued or resubmitted job resumes from the newest complete checkpoint. Slurm sends USR1
scheduler.signal_seconds_before_end seconds before the time limit; the ranks then save a checkpoint
and stop, and with scheduler.requeue = true the job puts itself back in the queue.

Before anything is written the settings are checked (ranks per node against a node's cores from
--cpus N or, for Slurm, sinfo; parallel.ep against launch.ranks; the time limit; ...).

Options:
  --scheduler slurm|pbs   which batch system (required)
  --dry-run               write and print the script, submit nothing
  --cpus N                a node has N cores (default for Slurm: what sinfo reports; else unchecked)
  --help                  this text

Exit status: 0 when submitted (or written, with --dry-run); 2 for a bad config, setting or argument
(nothing written); 1 when sbatch or qsub fails.

Scheduler keys (with the launch keys of moe-run --help):
)";

std::string scheduler_keys_help() {
  std::istringstream lines(moe::config_keys_help());
  std::string line, out;
  while (std::getline(lines, line))
    if (line.find("  scheduler.") == 0) out += line + "\n";
  return out;
}

// Runs a shell command line, returning its exit status and what it printed (stdout and stderr).
int run_capture(const std::string& command_line, std::string* output) {
  output->clear();
  FILE* p = ::popen((command_line + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) output->append(buf, n);
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool on_path(const std::string& program) {
  std::string out;
  return run_capture("command -v " + moe::shell_quote(program), &out) == 0;
}

// The cores of a node as Slurm knows them: the most CPUs of a node in the partition (sinfo %c).
std::optional<moe::NodeCores> slurm_node_cores(const std::string& partition) {
  if (!on_path("sinfo")) return std::nullopt;
  std::string out;
  std::string command = "sinfo -h -o %c";
  if (!partition.empty()) command += " -p " + moe::shell_quote(partition);
  if (run_capture(command, &out) != 0) return std::nullopt;
  std::istringstream lines(out);
  std::string line;
  int most = 0;
  while (std::getline(lines, line)) most = std::max(most, std::atoi(line.c_str()));
  if (most <= 0) return std::nullopt;
  return moe::NodeCores{most, "sinfo" + (partition.empty() ? std::string() : " -p " + partition)};
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  moe::LauncherArgs cli;
  moe::TrainConfig cfg;
  moe::Scheduler scheduler = moe::Scheduler::Slurm;
  moe::JobPlan plan;
  std::string script, script_path;
  try {
    cli = moe::parse_launcher_args(args, /*with_scheduler=*/true);
    if (cli.help) {
      std::printf("%s%s", kUsage, scheduler_keys_help().c_str());
      return 0;
    }
    if (cli.scheduler == "slurm") {
      scheduler = moe::Scheduler::Slurm;
    } else if (cli.scheduler == "pbs") {
      scheduler = moe::Scheduler::Pbs;
    } else {
      throw moe::InvalidArgument(cli.scheduler.empty()
                                     ? "missing --scheduler; accepted: --scheduler slurm, --scheduler pbs"
                                     : "--scheduler '" + cli.scheduler + "' is not known; accepted: slurm, pbs");
    }
    cfg = moe::load_train_config(cli.config, cli.overrides);
    std::optional<moe::NodeCores> cores;
    if (cli.cpus)
      cores = moe::NodeCores{*cli.cpus, "--cpus"};
    else if (scheduler == moe::Scheduler::Slurm)
      cores = slurm_node_cores(cfg.scheduler.partition);
    const std::string workdir = std::filesystem::current_path().string();
    plan = moe::plan_job(cfg, scheduler, cores, workdir);
    if (!cores)
      std::fprintf(stderr,
                   "moe-submit: note: the cores of a node are unknown (no --cpus%s): ranks per node not "
                   "checked against them\n",
                   scheduler == moe::Scheduler::Slurm ? ", no sinfo answer" : "");
    if (cfg.checkpoint.every == 0)
      std::fprintf(stderr,
                   "moe-submit: note: checkpoint.every = 0: only a stop signal saves a checkpoint; a job "
                   "that crashes or is killed starts over\n");

    moe::JobScriptInputs in;
    in.config_source = cli.config;
    in.workdir = workdir;
    script_path = moe::job_script_path(plan, scheduler);
    moe::require_output_not_input(script_path, {cli.config});
    in.script_path = script_path;
    in.train.moe_train = moe::sibling_executable("moe-train");
    in.train.config = std::filesystem::absolute(cli.config).lexically_normal().string();
    in.train.overrides = cli.overrides;
    in.as_root = ::geteuid() == 0;
    script = moe::job_script(cfg, plan, scheduler, in);
  } catch (const moe::InvalidArgument& e) {
    std::fprintf(stderr, "moe-submit: %s\n", e.what());
    return 2;
  }

  std::error_code ec;
  std::filesystem::create_directories(plan.run_dir, ec);
  {
    std::ofstream f(script_path);
    f << script;
    if (ec || !f.good()) {
      std::fprintf(stderr, "moe-submit: cannot write %s%s%s\n", script_path.c_str(), ec ? ": " : "",
                   ec ? ec.message().c_str() : "");
      return 1;
    }
  }
  ::chmod(script_path.c_str(), 0755);

  const std::string submit = scheduler == moe::Scheduler::Slurm ? "sbatch" : "qsub";
  if (cli.dry_run) {
    std::printf("%s", script.c_str());
    std::printf("# moe-submit: dry run: wrote %s; nothing submitted. To submit: %s %s\n", script_path.c_str(),
                submit.c_str(), moe::shell_quote(script_path).c_str());
    return 0;
  }
  if (!on_path(submit)) {
    std::fprintf(stderr,
                 "moe-submit: %s is not on PATH: is this a %s login node? (wrote %s; --dry-run only "
                 "writes the script)\n",
                 submit.c_str(), scheduler == moe::Scheduler::Slurm ? "Slurm" : "PBS", script_path.c_str());
    return 1;
  }
  std::string out;
  const std::string command =
      (scheduler == moe::Scheduler::Slurm ? "sbatch --parsable " : "qsub ") + moe::shell_quote(script_path);
  const int status = run_capture(command, &out);
  if (status != 0) {
    std::fprintf(stderr, "moe-submit: %s failed (exit status %d): %s\n", command.c_str(), status, trim(out).c_str());
    return 1;
  }
  // sbatch --parsable prints "JOBID" or "JOBID;CLUSTER" (after any warnings); qsub prints the job id.
  std::string id = trim(out);
  if (id.find('\n') != std::string::npos) id = id.substr(id.rfind('\n') + 1);
  if (scheduler == moe::Scheduler::Slurm) id = id.substr(0, id.find(';'));
  std::printf("moe-submit: submitted %s job %s: %s (output: %s)\n",
              scheduler == moe::Scheduler::Slurm ? "Slurm" : "PBS", id.c_str(), script_path.c_str(),
              plan.output.c_str());
  return 0;
}
