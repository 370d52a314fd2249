// The batch scripts moe-submit writes: a Slurm (sbatch) or PBS (qsub) script that starts the ranks,
// passes the scheduler's early stop signal on to them, and requeues (Slurm) or resubmits (PBS) a run
// that stopped before its last step. Plain bash with comments, meant to be read and edited by hand.
#pragma once

#include <string>

#include "launch/launcher/command.h"
#include "launch/launcher/launch_plan.h"

namespace moe {

// What the script needs besides the plan.
struct JobScriptInputs {
  std::string config_source;  // the config as the user named it (for the header comment)
  std::string workdir;        // absolute: the job cd's here, so relative paths mean what they meant at submission
  std::string script_path;    // absolute: where the script is written (PBS resubmits it)
  TrainInvocation train;      // moe-train, the config (absolute) and the overrides, without checkpoint.resume
  bool as_root = false;       // the job runs as root: mpirun needs --allow-run-as-root
};

// The name of the completion marker moe-train writes into run.dir when the last step is done
// (launch/trainer/trainer.cpp); the scripts requeue only runs without it.
inline constexpr const char* kDoneMarker = "DONE";

// <run_dir>/job.sbatch or <run_dir>/job.pbs.
std::string job_script_path(const JobPlan& plan, Scheduler scheduler);

// The script's text. moe-train always gets checkpoint.resume=auto last, so every start of the job
// (first, requeued, resubmitted) continues from the newest complete checkpoint.
std::string job_script(const TrainConfig& cfg, const JobPlan& plan, Scheduler scheduler, const JobScriptInputs& in);

}  // namespace moe
