// moe-run: starts a moe-train job as its config's launch section says: builds the mpirun (or srun)
// command, prints it, and runs it. moe-run CONFIG.yaml [--dry-run] [--cpus N] [key.path=value ...]
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "launch/config/train_config.h"
#include "launch/launcher/cli.h"
#include "launch/launcher/command.h"
#include "launch/launcher/launch_plan.h"

namespace {

const char* kUsage = R"(usage: moe-run CONFIG.yaml [--dry-run] [--cpus N] [key.path=value ...]

Starts moe-train on launch.ranks MPI ranks as CONFIG.yaml's launch section says (docs/launch.md):
builds the mpirun command (srun with launch.launcher = srun), prints it on one line, and runs it.
key.path=value arguments override config keys, for moe-run and for moe-train alike.

Each rank gets OMP_NUM_THREADS = run.threads_per_rank (the GEMM provider's threads) and the variables
of launch.env; with launch.bind = core each rank is pinned to cores of its own. As root, mpirun gets
--allow-run-as-root. Before anything starts the settings are checked: ranks x threads per node
against the cores of a node (this machine's, or --cpus N), the hostfile, parallel.ep against
launch.ranks, and the rest of the config.

Options:
  --dry-run   print the command, start nothing
  --cpus N    a node has N cores (default: this machine's count)
  --help      this text

Exit status: 2 for a bad config, setting or argument (nothing started); otherwise the launcher's
(mpirun exits with moe-train's status: 0 when the run completes, or stops on SIGUSR1 after saving a
checkpoint; SIGTERM or SIGINT to mpirun aborts the job and mpirun exits 1, see docs/launch.md).

Launch keys (run.threads_per_rank sets the threads of each rank; moe-train --help lists all keys):
)";

// The lines of config_keys_help() for the launch section, and run.threads_per_rank.
std::string launch_keys_help() {
  std::istringstream lines(moe::config_keys_help());
  std::string line, out;
  while (std::getline(lines, line))
    if (line.find("  launch.") == 0 || line.find("  run.threads_per_rank ") == 0) out += line + "\n";
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  moe::LauncherArgs cli;
  moe::TrainConfig cfg;
  moe::CommandGroups command;
  try {
    cli = moe::parse_launcher_args(args, /*with_scheduler=*/false);
    if (cli.help) {
      std::printf("%s%s", kUsage, launch_keys_help().c_str());
      return 0;
    }
    cfg = moe::load_train_config(cli.config, cli.overrides);
    moe::NodeCores cores;
    if (cli.cpus) {
      cores = {*cli.cpus, "--cpus"};
    } else {
      cores = {static_cast<int>(std::max(1u, std::thread::hardware_concurrency())), "this machine"};
    }
    const moe::LaunchPlan plan = moe::plan_launch(cfg, cores);
    if (cfg.launch.launcher == moe::LauncherKind::Srun && !cli.dry_run)
      MOE_REQUIRE(std::getenv("SLURM_JOB_ID") != nullptr,
                  "launch.launcher = srun starts ranks inside a Slurm allocation, and SLURM_JOB_ID is not set: run "
                  "moe-run inside salloc or sbatch (or moe-submit), or use launch.launcher=mpirun");
    moe::TrainInvocation train;
    train.moe_train = moe::sibling_executable("moe-train");
    train.config = std::filesystem::absolute(cli.config).string();
    train.overrides = cli.overrides;
    moe::CommandContext context;
    context.as_root = ::geteuid() == 0;
    command = moe::launch_command(cfg, plan, train, context, static_cast<int>(cfg.run.threads_per_rank));
  } catch (const moe::InvalidArgument& e) {
    std::fprintf(stderr, "moe-run: %s\n", e.what());
    return 2;
  }

  std::printf("%s\n", moe::shell_line(command).c_str());
  std::fflush(stdout);
  if (cli.dry_run) return 0;
  std::vector<std::string> words = moe::flatten(command);
  std::vector<char*> exec_argv;
  for (std::string& w : words) exec_argv.push_back(w.data());
  exec_argv.push_back(nullptr);
  ::execvp(exec_argv[0], exec_argv.data());
  std::fprintf(stderr, "moe-run: cannot run %s: %s (is it installed and on PATH?)\n", exec_argv[0],
               std::strerror(errno));
  return 127;
}
