// The routing statistics of a training run (launch/trainer/routing_stats.h).
#include "launch/trainer/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace moe {

namespace {
// probs (T, E): mean over rows of -sum p log p.
double mean_entropy(const Tensor& probs) {
  const int64_t T = probs.dim(0), E = probs.dim(1);
  if (T == 0) return 0.0;
  const float* p = probs.f32();
  double sum = 0;
  for (int64_t i = 0; i < T * E; ++i)
    if (p[i] > 0) sum -= static_cast<double>(p[i]) * std::log(static_cast<double>(p[i]));
  return sum / static_cast<double>(T);
}

void fill_zero(std::vector<std::vector<int64_t>>& table) {
  for (auto& row : table) std::fill(row.begin(), row.end(), 0);
}
}  // namespace

RoutingCounts::RoutingCounts(int64_t layers, int64_t experts, int64_t domains)
    : num_experts(experts), num_domains(domains), routed(layers, std::vector<int64_t>(experts, 0)), kept(routed),
      kept_total(routed), domain(layers, std::vector<int64_t>(std::max<int64_t>(domains, 0) * experts, 0)),
      step_routed(routed) {}

void RoutingCounts::add(const std::vector<MoELayer*>& layers, const std::vector<int64_t>& seq_domain,
                        int64_t seq_len, std::vector<double>& entropy) {
  for (size_t l = 0; l < layers.size(); ++l) {
    const MoEStats& st = layers[l]->stats();
    for (int64_t e = 0; e < num_experts; ++e) {
      routed[l][e] += st.routed[e];
      step_routed[l][e] += st.routed[e];
      kept[l][e] += st.kept[e];
      kept_total[l][e] += st.kept[e];
    }
    const Tensor& probs = layers[l]->router_output().probs;  // undefined with static routing
    if (probs.defined()) entropy[l] += mean_entropy(probs.to(Device::CPU));
    if (num_domains <= 0) continue;
    const Tensor expert_ids = layers[l]->router_output().expert.to(Device::CPU);
    const Tensor slots = layers[l]->plan().slot.to(Device::CPU);
    const int32_t* expert = expert_ids.i32();
    const int32_t* slot = slots.i32();
    const int64_t k = slots.dim(1);  // top_k, or E with expert choice (every expert offered every token)
    for (int64_t i = 0; i < st.tokens * k; ++i) {
      const int64_t dom = seq_domain[(i / k) / seq_len];
      if (slot[i] >= 0 && dom >= 0 && dom < num_domains) ++domain[l][dom * num_experts + expert[i]];
    }
  }
}

void RoutingCounts::clear_interval() {
  fill_zero(routed);
  fill_zero(kept);
}

void RoutingCounts::clear_step() { fill_zero(step_routed); }

void RoutingCounts::follow(const std::vector<ExpertEdit>& edits) {
  const int64_t E = edits.at(0).new_experts();
  // A row of old experts (blocks of num_experts) -> the same of the new ones.
  auto remap = [&](std::vector<int64_t>& row, const ExpertEdit& edit) {
    const int64_t blocks = static_cast<int64_t>(row.size()) / num_experts;
    std::vector<int64_t> out(static_cast<size_t>(blocks * E), 0);
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t j = 0; j < E; ++j)
        if (edit.experts[j].kept()) out[b * E + j] = row[b * num_experts + edit.experts[j].from];
    row = std::move(out);
  };
  for (auto* table : {&routed, &kept, &kept_total, &domain, &step_routed})
    for (size_t l = 0; l < table->size(); ++l) remap((*table)[l], edits.at(l));
  num_experts = E;
}

std::vector<int64_t> RoutingCounts::to_counters() const {
  std::vector<int64_t> out;
  for (const auto* table : {&routed, &kept, &kept_total, &domain})
    for (const auto& row : *table) out.insert(out.end(), row.begin(), row.end());
  return out;
}

bool RoutingCounts::from_counters(const std::vector<int64_t>& in) {
  if (in.size() != to_counters().size()) return false;
  size_t at = 0;
  for (auto* table : {&routed, &kept, &kept_total, &domain})
    for (auto& row : *table)
      for (int64_t& c : row) c = in[at++];
  return true;
}

std::vector<double> IntervalSums::to_sums() const {
  std::vector<double> out = {loss, aux, z};
  out.insert(out.end(), entropy.begin(), entropy.end());
  return out;
}

void IntervalSums::from_state(const std::vector<double>& sums, const std::vector<int64_t>& counters) {
  clear();
  if (sums.size() != 3 + entropy.size() || counters.size() != 1) return;
  loss = sums[0];
  aux = sums[1];
  z = sums[2];
  std::copy(sums.begin() + 3, sums.end(), entropy.begin());
  steps = counters[0];
}

std::string routing_report(const RoutingCounts& counts, const std::vector<int64_t>& moe_layer_ids,
                           const std::string& routing, const std::vector<std::string>& expert_changes) {
  std::ostringstream os;
  os << "routing: " << routing << "\n";
  if (!expert_changes.empty()) {
    os << "expert changes (moe.schedule):\n";
    for (const std::string& line : expert_changes) os << "  " << line << "\n";
    os << "(the tables: the experts at the end of the run, each counted since it took its id)\n";
  }
  const int64_t E = counts.num_experts;
  char buf[64];
  for (size_t l = 0; l < counts.kept_total.size(); ++l) {
    int64_t total = 0;
    for (int64_t c : counts.kept_total[l]) total += c;
    os << "layer " << moe_layer_ids[l] << " (MoE): share of kept tokens per expert\n  ";
    for (int64_t e = 0; e < E; ++e) {
      std::snprintf(buf, sizeof buf, " exp%-3lld", (long long)e);
      os << buf;
    }
    os << "\n  ";
    for (int64_t e = 0; e < E; ++e) {
      std::snprintf(buf, sizeof buf, " %5.1f%%", total ? 100.0 * counts.kept_total[l][e] / total : 0.0);
      os << buf;
    }
    os << "\n";
    if (counts.num_domains <= 0) continue;
    os << "  by domain of the synthetic corpus (each row: that domain's tokens over experts)\n";
    for (int64_t dom = 0; dom < counts.num_domains; ++dom) {
      int64_t row = 0;
      for (int64_t e = 0; e < E; ++e) row += counts.domain[l][dom * E + e];
      std::snprintf(buf, sizeof buf, "  domain %-3lld", (long long)dom);
      os << buf;
      for (int64_t e = 0; e < E; ++e) {
        std::snprintf(buf, sizeof buf, " %5.1f%%", row ? 100.0 * counts.domain[l][dom * E + e] / row : 0.0);
        os << buf;
      }
      os << "\n";
    }
  }
  return os.str();
}

}  // namespace moe
