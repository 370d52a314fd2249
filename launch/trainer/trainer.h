// The training job behind moe-train: builds the model, optimizer, data loaders and telemetry from a
// TrainConfig and runs the training loop on every rank of a world communicator.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/model/transformer.h"
#include "launch/config/train_config.h"
#include "launch/trainer/launcher_watch.h"
#include "launch/trainer/test_hooks.h"
#include "parallel/communicator.h"

namespace moe {

// Ends a run on every rank at once for a reason all ranks saw (too many non-finite steps).
class TrainingStopped : public std::runtime_error {
 public:
  explicit TrainingStopped(const std::string& what) : std::runtime_error(what) {}
};

// What run_training does: train (resuming as configured), or only evaluate a checkpoint.
enum class RunMode { Train, EvalOnly };

struct TrainOptions {
  RunMode mode = RunMode::Train;
  // Called (from the watchdog thread) with a message when a step exceeds run.watchdog_timeout_s;
  // must not return.
  void (*on_watchdog)(const std::string& message) = nullptr;
  // The rank stops itself (exit status 5) when this launcher dies: checked by the watchdog thread and
  // before each checkpoint is started.
  LauncherWatch launcher;
  TestHooks hooks;  // none unless a test sets them
};

struct TrainResult {
  int64_t steps_done = 0;
  double final_loss = 0;       // cross-entropy of the last step, mean over ranks
  double final_eval_loss = -1; // last evaluation, or -1 if none ran
  int64_t skipped_steps = 0;
  bool stopped_by_signal = false;  // request_stop() ended the run early, after saving a checkpoint
  std::string log_write_failure;   // rank 0: the first failed write of a log file ("" if none); no DONE then
};

// Asks a running run_training to finish its current step, save a checkpoint and return (all ranks
// agree on it at the step's end). Async-signal-safe: meant for a SIGTERM handler.
void request_stop();

// The model settings of a run.
TransformerConfig transformer_config(const TrainConfig& cfg);

// Runs the job. Collective over `world`; cfg must have passed validate_for_world(cfg, world.size()).
// Rank 0 writes the run directory (config.yaml, run_id, metrics.jsonl, tensorboard/,
// routing_report.txt, DONE) and prints progress to stdout; docs/run-directory.md has the rules for
// paths, reused run directories, damaged checkpoints and failed log writes (result.log_write_failure).
// A run resumed from a checkpoint that already reached run.steps says so and returns without
// touching the run directory (but for a missing DONE). Throws InvalidArgument for bad paths, data
// files, checkpoints and refused run directories (on every rank alike, before anything is written)
// and TrainingStopped when run.max_nonfinite_steps non-finite steps come in a row.
//
// RunMode::EvalOnly loads the newest complete checkpoint in checkpoint.dir (else
// checkpoint.init_from; InvalidArgument when there is neither), evaluates it on the held-out data,
// prints the loss and perplexity and appends them to metrics.jsonl; nothing else in the run
// directory changes.
TrainResult run_training(const TrainConfig& cfg, Communicator& world, const TrainOptions& options);

}  // namespace moe
