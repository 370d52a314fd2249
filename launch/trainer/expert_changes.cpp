// moe-train's expert schedule at run time (launch/trainer/expert_changes.h).
#include "launch/trainer/expert_changes.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/check.h"
#include "core/model/transformer.h"
#include "core/random.h"

namespace moe {

namespace {

std::string id_text(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) {
    if (!s.empty()) s += ',';
    s += std::to_string(id);
  }
  return s;
}

std::vector<double> shares(const std::vector<int64_t>& routed) {
  double total = 0;
  for (int64_t c : routed) total += static_cast<double>(c);
  std::vector<double> out(routed.size(), 0.0);
  if (total > 0)
    for (size_t e = 0; e < routed.size(); ++e) out[e] = static_cast<double>(routed[e]) / total;
  return out;
}

// "removed experts 2,5" / "split expert 3 into 3 and 8, 5 into 5 and 9" / "added fresh experts 8,9":
// what `edit` does, in words.
std::string edit_text(const ExpertEdit& edit) {
  std::vector<int64_t> removed, fresh;
  std::string splits;
  std::vector<bool> kept(static_cast<size_t>(edit.old_experts), false);
  for (int64_t j = 0; j < edit.new_experts(); ++j) {
    const NewExpert& x = edit.experts[j];
    if (x.kept()) kept[x.from] = true;
    else if (x.from < 0) fresh.push_back(j);
    else splits += (splits.empty() ? "" : ", ") + std::to_string(x.from) + " into " + std::to_string(x.from) + " and " +
                   std::to_string(j);
  }
  for (int64_t e = 0; e < edit.old_experts; ++e)
    if (!kept[e]) removed.push_back(e);
  std::string s;
  if (!removed.empty()) s += "removed expert" + std::string(removed.size() > 1 ? "s " : " ") + id_text(removed);
  if (!splits.empty()) s += (s.empty() ? "" : "; ") + std::string("split expert ") + splits;
  if (!fresh.empty())
    s += (s.empty() ? "" : "; ") + std::string("added fresh expert") + (fresh.size() > 1 ? "s " : " ") + id_text(fresh);
  return s;
}

std::string event_text(const ScheduleEvent& e) {
  return "moe.schedule event " + std::to_string(e.index) + " (\"" + e.text + "\")";
}

}  // namespace

ExpertScheduleRunner::ExpertScheduleRunner(const TrainConfig& cfg, int64_t ep, int64_t layers)
    : moe_(TransformerConfig{cfg.model, cfg.moe}.moe_layer_config()),
      ep_(ep),
      unit_(schedule_unit(cfg.moe, ep)),
      layers_(layers),
      seed_(static_cast<uint64_t>(cfg.run.seed)),
      init_std_(static_cast<float>(cfg.model.init_std)),
      out_scale_(1.f / std::sqrt(2.f * static_cast<float>(cfg.model.n_layers))),
      events_(parse_expert_schedule(cfg.moe.schedule)) {
  reset(cfg.moe.num_experts);
}

void ExpertScheduleRunner::reset(int64_t num_experts) {
  experts_ = num_experts;
  streak_.assign(events_.size(), {});
  for (size_t i = 0; i < events_.size(); ++i)
    if (events_[i].conditional())
      streak_[i].assign(static_cast<size_t>(layers_), std::vector<int64_t>(static_cast<size_t>(num_experts), 0));
  pending_.clear();
}

ExpertEdit ExpertScheduleRunner::edit_base(int64_t step, int index) const {
  ExpertEdit edit;
  edit.old_experts = experts_;
  edit.seed = stream_id(seed_, "moe.schedule." + std::to_string(step) + "." + std::to_string(index));
  edit.init_std = init_std_;
  edit.out_scale = out_scale_;
  return edit;
}

void ExpertScheduleRunner::observe(int64_t step, const std::vector<std::vector<int64_t>>& routed) {
  MOE_ASSERT(static_cast<int64_t>(routed.size()) == layers_, "counts for every MoE layer");
  for (size_t i = 0; i < events_.size(); ++i) {
    const ScheduleEvent& e = events_[i];
    if (!e.conditional()) continue;
    for (int64_t l = 0; l < layers_; ++l) {
      MOE_ASSERT(static_cast<int64_t>(routed[l].size()) == experts_, "counts for every expert");
      const std::vector<double> share = shares(routed[l]);
      const bool any = std::any_of(routed[l].begin(), routed[l].end(), [](int64_t c) { return c > 0; });
      for (int64_t x = 0; x < experts_; ++x) {
        const bool holds = any && (e.action == ScheduleAction::Remove ? share[x] < e.share : share[x] > e.share);
        int64_t& streak = streak_[i][l][x];
        streak = holds ? streak + 1 : 0;
      }
    }
    if (!pending_.empty()) continue;
    ExpertChange change = condition_change(step, e, routed);
    if (change.new_experts != change.old_experts) pending_.push_back(std::move(change));
  }
}

ExpertChange ExpertScheduleRunner::condition_change(int64_t step, const ScheduleEvent& e,
                                                    const std::vector<std::vector<int64_t>>& routed) const {
  const bool remove = e.action == ScheduleAction::Remove;
  const size_t i = static_cast<size_t>(e.index - 1);
  // Per layer: its experts, those whose condition held long enough first, then by share (lowest
  // first for remove, highest for split), then by id.
  std::vector<std::vector<int64_t>> order(static_cast<size_t>(layers_));
  std::vector<std::vector<double>> share(static_cast<size_t>(layers_));
  int64_t count = remove ? INT64_MAX : 0;
  for (int64_t l = 0; l < layers_; ++l) {
    share[l] = shares(routed[l]);
    std::vector<int64_t>& o = order[l];
    o.resize(static_cast<size_t>(experts_));
    std::iota(o.begin(), o.end(), 0);
    auto held = [&](int64_t x) { return streak_[i][l][x] >= e.intervals; };
    std::stable_sort(o.begin(), o.end(), [&](int64_t a, int64_t b) {
      if (held(a) != held(b)) return held(a);
      return remove ? share[l][a] < share[l][b] : share[l][a] > share[l][b];
    });
    const int64_t n = std::count_if(o.begin(), o.end(), held);
    count = remove ? std::min(count, n) : std::max(count, n);
  }
  // The count, a multiple of unit_, within the event's bound, leaving a valid number of experts.
  if (remove) {
    int64_t least = e.bound;
    for (int64_t m = unit_; least == 0 && m <= experts_; m += unit_)
      if (experts_problem(moe_, m, ep_).empty()) least = m;
    count = std::min(count / unit_ * unit_, std::max<int64_t>(0, (experts_ - least) / unit_ * unit_));
  } else {
    const int64_t most = e.bound > 0 ? e.bound : 2 * moe_.num_experts;
    count = std::min({(count + unit_ - 1) / unit_ * unit_, std::max<int64_t>(0, most - experts_) / unit_ * unit_,
                      experts_ / unit_ * unit_});
  }
  while (count > 0 && !experts_problem(moe_, remove ? experts_ - count : experts_ + count, ep_).empty()) count -= unit_;

  ExpertChange change;
  change.old_experts = change.new_experts = experts_;
  if (count <= 0) return change;
  change.new_experts = remove ? experts_ - count : experts_ + count;
  char cond[96];
  std::snprintf(cond, sizeof cond, "share %s %g for %lld log interval%s", remove ? "<" : ">", e.share,
                (long long)e.intervals, e.intervals > 1 ? "s" : "");
  change.why = event_text(e) + ": the experts with the " + (remove ? "lowest" : "highest") + " share, those with " +
               cond + " first";
  for (int64_t l = 0; l < layers_; ++l) {
    std::vector<int64_t> chosen(order[l].begin(), order[l].begin() + count);
    ExpertEdit edit = edit_base(step, e.index);
    if (remove) {
      std::vector<int64_t> keep;
      for (int64_t x = 0; x < experts_; ++x)
        if (std::find(chosen.begin(), chosen.end(), x) == chosen.end()) keep.push_back(x);
      edit.experts = keep_experts_edit(experts_, keep).experts;
    } else {
      edit.experts = split_experts_edit(experts_, chosen, e.noise).experts;
    }
    std::string text = edit_text(edit) + " (share";
    for (int64_t x : chosen) {
      char s[32];
      std::snprintf(s, sizeof s, " %.4f", share[l][x]);
      text += s;
    }
    change.what.push_back(text + ")");
    change.edits.push_back(std::move(edit));
  }
  return change;
}

ExpertChange ExpertScheduleRunner::step_change(const ScheduleEvent& e) const {
  ExpertEdit edit = edit_base(e.step, e.index);
  switch (e.action) {
    case ScheduleAction::Remove: {
      std::vector<int64_t> keep;
      for (int64_t x = 0; x < experts_; ++x)
        if (std::find(e.experts.begin(), e.experts.end(), x) == e.experts.end()) keep.push_back(x);
      edit.experts = keep_experts_edit(experts_, keep).experts;
      break;
    }
    case ScheduleAction::Add: edit.experts = add_experts_edit(experts_, e.count, -1).experts; break;
    case ScheduleAction::Split: edit.experts = split_experts_edit(experts_, e.experts, e.noise).experts; break;
  }
  ExpertChange change;
  change.old_experts = experts_;
  change.new_experts = edit.new_experts();
  change.why = event_text(e);
  change.what.assign(static_cast<size_t>(layers_), edit_text(edit));
  change.edits.assign(static_cast<size_t>(layers_), edit);
  return change;
}

std::vector<ExpertChange> ExpertScheduleRunner::due(int64_t step) {
  std::vector<ExpertChange> out;
  out.swap(pending_);
  if (!out.empty()) experts_ = out.back().new_experts;
  for (const ScheduleEvent& e : events_) {
    if (e.step != step) continue;
    out.push_back(step_change(e));
    experts_ = out.back().new_experts;
  }
  if (!out.empty()) reset(experts_);
  return out;
}

std::string ExpertScheduleRunner::remaining(int64_t step) const {
  std::vector<ScheduleEvent> left;
  for (const ScheduleEvent& e : events_)
    if (e.conditional() || e.step > step) left.push_back(e);
  return schedule_text(left);
}

std::vector<int64_t> ExpertScheduleRunner::to_counters() const {
  std::vector<int64_t> out;
  for (const auto& event : streak_)
    for (const auto& layer : event) out.insert(out.end(), layer.begin(), layer.end());
  return out;
}

bool ExpertScheduleRunner::from_counters(const std::vector<int64_t>& in) {
  if (in.size() != to_counters().size()) {
    reset(experts_);
    return false;
  }
  size_t at = 0;
  for (auto& event : streak_)
    for (auto& layer : event)
      for (int64_t& c : layer) c = in[at++];
  return true;
}

}  // namespace moe
