// What moe-train puts into a checkpoint and takes back out: the model's parameters and the
// optimizer's state (dense tensors once, split over the ranks; each expert once, by global id), the
// aux-free balancing biases, and the loop's own state (step, data position, counters).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/check.h"
#include "launch/config/train_config.h"
#include "core/model/transformer.h"
#include "core/parameters.h"
#include "data/data_loader.h"
#include "optim/optimizer.h"
#include "parallel/process_groups.h"

namespace moe {

// The training loop's state beyond the tensors.
struct LoopState {
  int64_t step = 0;                   // steps done
  LoaderPosition loader;              // where the next batch comes from
  int64_t skipped_steps = 0;
  int64_t consecutive_nonfinite = 0;
  std::vector<double> shared_sums;        // identical on every rank (log-interval sums)
  std::vector<int64_t> shared_counters;   // identical on every rank
  std::vector<int64_t> rank_counters;     // this rank's own (routing counts); dropped when the world size changes
  std::vector<std::vector<int64_t>> expert_usage;  // [MoE layer][expert] kept tokens so far, all ranks
};

// Collective over world. Writes <cfg.checkpoint.dir>/step_<step> and keeps the newest cfg.checkpoint.keep.
// Returns the checkpoint directory. test_kill_midway: this rank dies halfway through its shard
// (TestHooks).
std::string save_training_checkpoint(const TrainConfig& cfg, const std::string& run_id, const LoopState& loop,
                                     TransformerLM& model, ParameterRegistry& registry, Optimizer& optimizer,
                                     const ProcessGroups& groups, Communicator& world, bool test_kill_midway = false);

// The checkpoint's files are missing, unreadable or damaged (a bad CRC), as opposed to a checkpoint
// that is sound but does not fit this run (another model shape or optimizer).
class DamagedCheckpoint : public InvalidArgument {
 public:
  explicit DamagedCheckpoint(const std::string& what) : InvalidArgument(what) {}
};

// Loads checkpoint `dir` into the model, optimizer and loop state, whatever world size and ep it was
// written with (experts are matched by global id). Every rank reads what it holds. Throws
// DamagedCheckpoint for missing or damaged files, InvalidArgument for another model shape or a data
// position that does not map onto this run's batch; each names the file and the problem. Returns the
// checkpoint's run id.
std::string load_training_checkpoint(const std::string& dir, const TrainConfig& cfg, TransformerLM& model,
                                     ParameterRegistry& registry, Optimizer& optimizer, const ProcessGroups& groups,
                                     int64_t steps_per_epoch, LoopState* loop);

// Loads the model's parameters and its MoE layers' selection biases from checkpoint `dir` (what inference
// needs: no optimizer or loop state), whatever world size and ep it was written with. Every rank reads
// what it holds. Throws as load_training_checkpoint.
void load_model_weights(const std::string& dir, TransformerLM& model, ParameterRegistry& registry,
                        const ProcessGroups& groups);

// Every tensor of the run's state, as a checkpoint holds it (parameters, optimizer state, selection
// biases), by name, whole, on the host: expert tensors gathered over the expert-parallel group (all E
// experts in global id order). Collective over groups.expert_parallel (its control communicator).
std::map<std::string, Tensor> gather_training_state(TransformerLM& model, ParameterRegistry& registry,
                                                    Optimizer& optimizer, const ProcessGroups& groups);

// The inverse of gather_training_state for another model of the same shape but perhaps another
// number of experts (groups.layout's): each state tensor takes its value from `full` (its rows of
// this rank's experts for an expert tensor). Every name must be there with its shape (asserted).
void scatter_training_state(const std::map<std::string, Tensor>& full, TransformerLM& model,
                            ParameterRegistry& registry, Optimizer& optimizer, const ProcessGroups& groups);

}  // namespace moe
