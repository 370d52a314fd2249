// moe.schedule: experts that grow and shrink during training. The key's text is a list of events
// separated by ';' (docs/routing.md, "Experts that grow and shrink"):
//   at STEP remove IDS                        after step STEP, remove experts IDS (e.g. 2,5) of every MoE layer
//   at STEP add N                             after step STEP, append N fresh experts to every MoE layer
//   at STEP split IDS [noise X]               after step STEP, append a perturbed copy of each expert in IDS
//   when share < X [for N] remove [min M]     at a log line: experts whose share of their layer's routed
//                                             (token, choice) pairs in the last N log intervals stayed below X
//   when share > X [for N] split [max M] [noise X]   ... stayed above X
// This file parses and validates the text; the trainer (launch/trainer/expert_changes.h) runs it
// and optim/expert_edit.h edits the tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/moe/moe_config.h"

namespace moe {

enum class ScheduleAction { Remove, Add, Split };

struct ScheduleEvent {
  std::string text;   // as written (trimmed): what messages and the trainer's log lines quote
  int index = 0;      // 1-based position in moe.schedule
  ScheduleAction action = ScheduleAction::Add;
  int64_t step = 0;   // > 0: a step-driven event, applied after that optimizer step; 0: a condition
  std::vector<int64_t> experts;  // remove / split at a step: the global expert ids
  int64_t count = 0;             // add: experts appended
  float noise = 0.01f;           // split: the copy's weights are multiplied by 1 + noise * N(0, 1)
  // Conditions: an expert's share of its layer's routed pairs per log interval, below (remove) or
  // above (split) `share`, for `intervals` consecutive log intervals; the layers never go below
  // `bound` (remove) or above it (split) experts. 0: removal stops at the smallest valid multiple of
  // schedule_unit, splitting at twice the starting moe.num_experts.
  double share = 0;
  int64_t intervals = 1;
  int64_t bound = 0;

  bool conditional() const { return step == 0; }
};

// The events of moe.schedule in written order ("" -> none). Throws InvalidArgument "moe.schedule
// event N ("..."): <what is wrong>; accepted: <the grammar>" for text that is not an event list.
std::vector<ScheduleEvent> parse_expert_schedule(const std::string& text);

// The text of `events` joined back into moe.schedule's form.
std::string schedule_text(const std::vector<ScheduleEvent>& events);

// `moe` below: the MoE layers' settings (TransformerConfig::moe_layer_config, d_model filled in).
// Empty when an MoE layer with `num_experts` experts is valid for `moe` (validate()) on ep
// expert-parallel ranks (divisible by ep, routing groups, top_k), else why not, naming the keys.
std::string experts_problem(const MoEConfig& moe, int64_t num_experts, int64_t ep);

// The number condition-driven changes move num_experts by a multiple of: ep, or lcm(ep,
// routing_groups) with a number of routing groups.
int64_t schedule_unit(const MoEConfig& moe, int64_t ep);

// Checks moe.schedule against the layout, before any collective: step events in 1..steps, the ids
// each names existing (distinct) when it fires, and num_experts valid (experts_problem) after every
// step-driven change, applied in step order (events of one step in written order); each condition's
// min / max valid and a multiple of schedule_unit, a remove's min <= the experts it starts from; a
// schedule with conditions names no experts at a step (they could be gone) and adds multiples of
// schedule_unit. Throws InvalidArgument "config: moe.schedule event N ("..."): ...".
void validate_expert_schedule(const MoEConfig& moe, int64_t ep, int64_t steps);

}  // namespace moe
