// The routing statistics a training run keeps of its MoE layers: per log interval (routed and kept
// (token, choice) pairs per expert, router entropy), per optimizer step (for aux-free balancing) and
// over the whole run (the routing report, with the synthetic corpus' domain-by-expert table).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/moe/moe_layer.h"
#include "optim/expert_edit.h"

namespace moe {

// This rank's routing counts, [MoE layer][expert] (domain: [layer][domain * E + expert]).
struct RoutingCounts {
  int64_t num_experts = 0, num_domains = 0;
  std::vector<std::vector<int64_t>> routed;       // before dropping, since the last log line
  std::vector<std::vector<int64_t>> kept;         // after dropping, since the last log line
  std::vector<std::vector<int64_t>> kept_total;   // after dropping, whole run
  std::vector<std::vector<int64_t>> domain;       // kept, by the sequence's domain, whole run
  std::vector<std::vector<int64_t>> step_routed;  // before dropping, this optimizer step

  RoutingCounts(int64_t layers, int64_t experts, int64_t domains);

  // Adds the last forward of every layer; entropy[l] += the mean over its tokens of the entropy of
  // layer l's router probabilities (nothing with static routing: no router). seq_domain: each
  // sequence's domain (-1: unknown).
  void add(const std::vector<MoELayer*>& layers, const std::vector<int64_t>& seq_domain, int64_t seq_len,
           std::vector<double>& entropy);
  void clear_interval();  // routed and kept
  void clear_step();      // step_routed
  // After a change of the experts (edits[l] for MoE layer l, all to the same number): every table
  // follows, a kept expert with its counts, a new one from zero.
  void follow(const std::vector<ExpertEdit>& edits);

  // The counts a checkpoint keeps (all but step_routed) as one flat list, and back (false, nothing
  // changed: another layout).
  std::vector<int64_t> to_counters() const;
  bool from_counters(const std::vector<int64_t>& in);
};

// Sums since the last log line that every rank holds alike (they come from the step's all-reduce):
// kept in checkpoints, so a resumed run logs exactly what an uninterrupted one would.
struct IntervalSums {
  int64_t steps = 0;
  double loss = 0, aux = 0, z = 0;
  std::vector<double> entropy;  // [MoE layer] per-step mean router entropy

  explicit IntervalSums(size_t layers) : entropy(layers, 0.0) {}
  void clear() { *this = IntervalSums(entropy.size()); }
  std::vector<double> to_sums() const;
  // Takes a checkpoint's sums; left cleared when they have another layout (an older checkpoint).
  void from_state(const std::vector<double>& sums, const std::vector<int64_t>& counters);
};

// A header line "routing: <routing>" (MoEConfig::routing_description), the trainer's log lines of the
// changes moe.schedule made (expert_changes), then per MoE layer (named by the model's layer index),
// each expert's share of the kept pairs of the whole run; with domains, each domain's pairs over the
// experts.
std::string routing_report(const RoutingCounts& counts, const std::vector<int64_t>& moe_layer_ids,
                           const std::string& routing, const std::vector<std::string>& expert_changes = {});

}  // namespace moe
