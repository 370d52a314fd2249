// The command lines that start a moe-train job's ranks (mpirun or srun, then moe-train), as argument
// groups that print either on one line (moe-run) or one group per line (job scripts).
#pragma once

#include <string>
#include <vector>

#include "launch/launcher/launch_plan.h"

namespace moe {

// moe-train and its arguments.
struct TrainInvocation {
  std::string moe_train;               // path of the moe-train binary
  std::string config;                  // path of the config file
  std::vector<std::string> overrides;  // key.path=value, in order
};

// Where the command runs.
struct CommandContext {
  bool as_root = false;           // mpirun needs --allow-run-as-root
  bool in_allocation = false;     // inside a batch job: the scheduler's nodes, no --host / --hostfile
  std::string hostfile_override;  // a hostfile to use instead of the plan's (PBS: "$PBS_NODEFILE")
};

// A command as groups of words: the program and its first words, then one group per option with its
// values, then moe-train with its arguments.
using CommandGroups = std::vector<std::vector<std::string>>;

// mpirun -np R [--allow-run-as-root] [--oversubscribe] [--host H | --hostfile F] --map-by M
//   --bind-to B -x OMP_NUM_THREADS=T [-x NAME=value | -x NAME ...] [extra args] moe-train CONFIG ARGS
// Mapping: ppr:<ranks per node>:node when the plan fixes it, else slot; with launch.bind = core and
// more than one thread per rank, :PE=<threads> gives each rank its own cores. Oversubscribed ranks
// are not bound (binding would pin several ranks to one core).
CommandGroups mpirun_command(const TrainConfig& cfg, const LaunchPlan& plan, const TrainInvocation& train,
                             const CommandContext& context);

// srun --mpi=pmix --ntasks=R [--ntasks-per-node=N] --cpus-per-task=T --cpu-bind=B
//   --export=ALL,OMP_NUM_THREADS=T[,NAME=value ...] [extra args] moe-train CONFIG ARGS
CommandGroups srun_command(const TrainConfig& cfg, const LaunchPlan& plan, const TrainInvocation& train,
                           int cpus_per_task);

// The command of launch.launcher (cpus_per_task: srun's --cpus-per-task).
CommandGroups launch_command(const TrainConfig& cfg, const LaunchPlan& plan, const TrainInvocation& train,
                             const CommandContext& context, int cpus_per_task);

// Every word in order (an argv without the terminating null).
std::vector<std::string> flatten(const CommandGroups& groups);

// One word for a POSIX shell: unchanged when made of [A-Za-z0-9_@%+=:,./-] only (and not empty),
// else in single quotes (a ' inside becomes '\'').
std::string shell_quote(const std::string& word);

// The command on one line, every word quoted: paste it into a shell to run it.
std::string shell_line(const CommandGroups& groups);

// The command with one group per line, continued with " \" and indented by `indent` after the first.
std::string shell_lines(const CommandGroups& groups, const std::string& indent);

}  // namespace moe
