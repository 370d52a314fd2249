// The directories a training run writes: the checks every rank makes on them before the first
// collective, and the rule for starting in a run directory that already holds a run
// (docs/run-directory.md has the guarantees).
#pragma once

#include <string>

#include "launch/config/train_config.h"

namespace moe {

// The files moe-train writes in run.dir (tensorboard/ is a directory).
inline constexpr const char* kRunFiles[] = {"config.yaml", "run_id", "metrics.jsonl", "routing_report.txt", "DONE"};
inline constexpr const char* kTensorBoardDir = "tensorboard";

// Checks every path the run will write, before anything is written: run.dir, and checkpoint.dir when
// training, must be directories this process can write, or not exist yet under one it can write, and
// not on a pseudo file system (/proc, /sys); the files of kRunFiles that exist in run.dir must be
// regular files and tensorboard/ a directory. Throws InvalidArgument naming the key, the path and
// what is wrong. Reads only the file system: every rank reaches the same verdict.
void check_run_paths(const TrainConfig& cfg, bool training);

// What run.dir holds from earlier runs.
struct RunDirectoryState {
  bool holds_run = false;   // any of kRunFiles or tensorboard/ exists
  bool finished = false;    // DONE exists
  std::string config_yaml;  // config.yaml, "" if missing
  std::string run_id;       // run_id (the id the run's checkpoints carry), "" if missing
};
RunDirectoryState read_run_directory(const std::string& dir);

// Whether a training run may start in run.dir: "" when it may, else why not. start_run_id is the run
// id of the checkpoint the run starts from ("" for a fresh start). The run *resumes* the directory
// when it starts from a checkpoint whose run id is the directory's run_id: always allowed. Otherwise
// a finished run (DONE) and another run (config.yaml differs from this config) are refused; an
// unfinished run of the same config is restarted from where this run starts.
std::string run_directory_refusal(const RunDirectoryState& state, const TrainConfig& cfg,
                                  const std::string& start_run_id);

}  // namespace moe
