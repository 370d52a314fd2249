// moe-train's expert schedule at run time (moe.schedule, launch/config/expert_schedule.h): which
// changes of the experts are due after a step, from the step events and from the conditions on the
// experts' routed shares that the log lines see, each as one ExpertEdit (optim/expert_edit.h) per MoE
// layer. Every rank holds the same runner state and sees the same all-reduced counts, so every rank
// decides the same changes without communicating.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "launch/config/expert_schedule.h"
#include "launch/config/train_config.h"
#include "optim/expert_edit.h"

namespace moe {

// One change of every MoE layer's experts, from old_experts to new_experts (the same for each layer).
struct ExpertChange {
  int64_t old_experts = 0, new_experts = 0;
  std::vector<ExpertEdit> edits;  // [MoE layer]
  std::vector<std::string> what;  // [MoE layer] "removed experts 2,5", "added fresh experts 8,9", ...
  std::string why;                // "moe.schedule event 1 (\"at 40 remove 2,5\")"
};

class ExpertScheduleRunner {
 public:
  // cfg must have passed validate_for_world with expert-parallel size ep; `layers` MoE layers.
  ExpertScheduleRunner(const TrainConfig& cfg, int64_t ep, int64_t layers);

  bool empty() const { return events_.empty(); }
  // The layers have num_experts experts (a fresh start, or a resumed checkpoint's); streaks cleared.
  void reset(int64_t num_experts);

  // At the log line of step `step`: routed[l][e], the pairs MoE layer l routed to expert e in the log interval,
  // summed over all ranks. Advances each condition's streaks; the first condition whose change
  // would do something becomes pending (applied by the next due()).
  void observe(int64_t step, const std::vector<std::vector<int64_t>>& routed);

  // The changes to make after optimizer step `step`, in order: a pending condition change, then the
  // step events of `step` in written order, each edit made from the experts the one before leaves.
  // The runner moves on to the last one's number of experts, streaks cleared.
  std::vector<ExpertChange> due(int64_t step);

  // moe.schedule without the step events of steps <= step: what is left to do, which a checkpoint
  // after `step` records in its config.
  std::string remaining(int64_t step) const;

  // The condition streaks, for a checkpoint (identical on every rank), and back; false (streaks
  // cleared) when they have another layout.
  std::vector<int64_t> to_counters() const;
  bool from_counters(const std::vector<int64_t>& in);

 private:
  ExpertEdit edit_base(int64_t step, int index) const;  // seed and fresh-expert init of an edit
  ExpertChange condition_change(int64_t step, const ScheduleEvent& e,
                                const std::vector<std::vector<int64_t>>& routed) const;
  ExpertChange step_change(const ScheduleEvent& e) const;

  const MoEConfig moe_;
  const int64_t ep_, unit_, layers_;
  const uint64_t seed_;
  const float init_std_, out_scale_;
  std::vector<ScheduleEvent> events_;
  int64_t experts_ = 0;
  std::vector<std::vector<std::vector<int64_t>>> streak_;  // [event][layer][expert] log intervals the condition held
  std::vector<ExpertChange> pending_;                      // at most one
};

}  // namespace moe
