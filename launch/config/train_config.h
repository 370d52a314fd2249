// The run configuration of moe-train: typed sections read from YAML, `key.path=value` overrides, and
// strict validation with messages that name the key, the value and what is accepted.
//
// Every key is declared once, in the schema in train_config.cpp (path, field, type, accepted range or
// choices, one-line doc); its default is the field's initializer: below, or in the struct the code
// itself uses (ModelConfig, MoEConfig, OptimizerConfig, DataConfig), whose validate() is the one
// check of its keys. Loading, unknown-key detection, overrides, validation, to_yaml and
// config_keys_help are all loops over that schema, so a new key is a new field here (or in that
// struct) plus one schema line there. `config_keys_help()` lists every key.
//
// Every error is a moe::InvalidArgument whose message starts with "config: ". Nothing here touches
// MPI or any other shared state: every rank can load and validate the same file before the first
// collective and reach the same verdict, so a bad config fails identically everywhere.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model/model_options.h"
#include "core/moe/moe_config.h"
#include "data/data_config.h"
#include "optim/optimizer_config.h"
#include "parallel/process_groups.h"

namespace moe {

enum class ResumeMode { Never, Auto };

struct RunConfig {
  std::string name = "run";
  std::string dir;                     // after loading: never empty ("" means runs/<name>)
  int64_t seed = 1;
  int64_t steps = 300;
  int64_t log_every = 10;
  int64_t eval_every = 100;            // 0 = never
  int64_t eval_batches = 4;
  int64_t threads_per_rank = 1;
  double watchdog_timeout_s = 300.0;
  int64_t max_nonfinite_steps = 5;     // consecutive non-finite steps before the run stops
  double peak_gflops = 0;              // one rank's peak that MFU divides by; 0 = measured at start-up
  Device device = Device::CPU;         // where the model trains; each rank takes its local rank's GPU
  bool operator==(const RunConfig&) const = default;
};

struct ParallelConfig {
  int64_t ep = 0;                      // 0 = the world size; see resolved_ep()
  DataBackend backend = DataBackend::MPI;  // the groups' data communicators; nccl needs run.device = cuda
  bool operator==(const ParallelConfig&) const = default;
};

struct CheckpointConfig {
  std::string dir;                     // after loading: never empty ("" means <run.dir>/checkpoints)
  int64_t every = 0;                   // 0 = never
  int64_t keep = 3;
  ResumeMode resume = ResumeMode::Never;
  std::string init_from;               // checkpoint to start from when none is resumed; "" = fresh
  bool operator==(const CheckpointConfig&) const = default;
};

// How moe-run starts the ranks (launch/moe_run.cpp). moe-train itself ignores this section; the
// threads of each rank are run.threads_per_rank. Validated for a launch by launch/launcher/.
enum class BindMode { None, Core, Socket };
enum class LauncherKind { Mpirun, Srun };

struct LaunchConfig {
  int64_t ranks = 1;                   // the world size
  int64_t ranks_per_node = 0;          // 0 = all ranks on one node (or as the hosts' slots say)
  std::string hosts;                   // "a:2,b:2" (launch/config/launch_values.h); "" = none
  std::string hostfile;                // an OpenMPI hostfile; "" = none
  BindMode bind = BindMode::Core;
  bool oversubscribe = false;          // allow more ranks x threads on a node than it has cores
  std::string env;                     // "NAME=value NAME ..." for every rank
  LauncherKind launcher = LauncherKind::Mpirun;
  std::string extra_args;              // more launcher arguments, whitespace-separated
  bool operator==(const LaunchConfig&) const = default;
};

// The batch job moe-submit writes (launch/moe_submit.cpp). moe-train ignores this section.
struct SchedulerConfig {
  int64_t nodes = 0;                   // 0 = from launch.ranks and launch.ranks_per_node
  int64_t tasks_per_node = 0;          // 0 = launch.ranks_per_node, or launch.ranks on one node
  int64_t gpus_per_node = 0;
  int64_t cpus_per_task = 0;           // 0 = run.threads_per_rank
  std::string time_limit = "01:00:00"; // HH:MM:SS
  std::string partition;               // Slurm
  std::string queue;                   // PBS
  std::string account;
  std::string job_name;                // "" = run.name
  std::string output;                  // "" = a file in run.dir
  std::string error;                   // "" = together with output
  int64_t signal_seconds_before_end = 120;  // 0 = no early signal
  bool requeue = true;
  bool operator==(const SchedulerConfig&) const = default;
};

struct TrainConfig {
  RunConfig run;
  ModelConfig model;                   // core/model/model_options.h
  MoEConfig moe;                       // core/moe/moe_config.h; d_model and init_std come from model
  ParallelConfig parallel;
  OptimizerConfig optim;               // optim/optimizer_config.h
  DataConfig data;                     // data/data_config.h; the corpus takes model.vocab_size and run.seed
  CheckpointConfig checkpoint;
  LaunchConfig launch;
  SchedulerConfig scheduler;
  bool operator==(const TrainConfig&) const = default;

  // Every check that does not depend on the world size: each key's range or choices, then
  // the validate() of ModelConfig, MoEConfig, OptimizerConfig and DataConfig (d_model divisible by
  // n_heads, rotary needs an even head dim, top_k <= num_experts, min_lr <= lr, source = tokens needs
  // train_path, the synthetic corpus fits model.vocab_size, parallel.backend = nccl needs run.device =
  // cuda; their messages get "config: model.",
  // "config: moe.", "config: optim." or "config: data."). Throws InvalidArgument naming the keys and
  // values involved.
  void validate() const;
};

// Reads the YAML file at `yaml_path`, applies `overrides` (each "section.key=value", in order, later
// ones winning), fills the derived defaults (run.dir, checkpoint.dir, moe.shared_expert_hidden,
// moe.aux_loss_coeff) and validates (TrainConfig::validate). Keys missing from the file keep their
// defaults; an empty file is the default config. Throws InvalidArgument, naming the file with
// line:column where known, for: a path that is not a regular file (a directory, a FIFO, a device;
// refused before it is opened) or a file over 16 MiB, an unreadable file (with the OS error), a YAML
// syntax error, an unknown key (with its full path and the closest valid key), a non-map where a
// section is expected or a map/sequence where a value is expected, a key given twice, a value of
// the wrong type, a value out of range, and a malformed override (no '=', unknown path, wrong type;
// the message quotes the argument). A message quotes at most 80 characters of any user input (key,
// value, argument, path), then its size, and takes bounded time whatever the input.
TrainConfig load_train_config(const std::string& yaml_path, const std::vector<std::string>& overrides = {});

// As load_train_config, with the YAML given as text; `source_name` stands for the file in messages.
TrainConfig parse_train_config(const std::string& yaml_text, const std::string& source_name,
                               const std::vector<std::string>& overrides = {});

// parallel.ep with 0 resolved to world_size. Does not validate.
int resolved_ep(const TrainConfig& cfg, int world_size);

// cfg.validate(), then the checks that need the world size: world_size >= 1, the resolved ep divides
// world_size, moe.num_experts is divisible by the resolved ep. Throws InvalidArgument naming the
// values, and the world size as `world_name` followed by it ("the world size 4"; moe-run and
// moe-submit, which check the ranks they will start, pass "launch.ranks ="). Pure and local: call it
// on every rank before the first collective.
void validate_for_world(const TrainConfig& cfg, int world_size, const std::string& world_name = "the world size");

// Every key in schema order, as YAML with one section per map and a comment per key; strings are
// double-quoted. load_train_config / parse_train_config read it back to an equal TrainConfig.
std::string to_yaml(const TrainConfig& cfg);

// One line per key: path, type, default, accepted values, doc. For `moe-train --help`.
std::string config_keys_help();

}  // namespace moe
