// Experts that grow and shrink (moe.schedule): the expert edits (optim/expert_edit.h) against a
// reference written here element by element, the schedule's grammar and its validation against the
// layout (launch/config/expert_schedule.h), when the run-time runner's conditions fire
// (launch/trainer/expert_changes.h), and how the routing counts follow a change.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/check.h"
#include "core/random.h"
#include "launch/config/expert_schedule.h"
#include "launch/config/train_config.h"
#include "launch/trainer/expert_changes.h"
#include "launch/trainer/routing_stats.h"
#include "optim/expert_edit.h"
#include "tests/test_util.h"

namespace moe {
namespace {

// (E, 2, 3) with element (e, i) = 100 e + i + 1: every expert's slice tells where it came from.
Tensor expert_rows(int64_t E) {
  std::vector<float> v;
  for (int64_t e = 0; e < E; ++e)
    for (int i = 0; i < 6; ++i) v.push_back(static_cast<float>(100 * e + i + 1));
  return Tensor::from({E, 2, 3}, v);
}

// (2, E) with element (r, e) = 10 r + e + 1.
Tensor gate_columns(int64_t E) {
  std::vector<float> v;
  for (int r = 0; r < 2; ++r)
    for (int64_t e = 0; e < E; ++e) v.push_back(static_cast<float>(10 * r + e + 1));
  return Tensor::from({2, E}, v);
}

// ---- The edits, against the reference ----------------------------------------------------------

// The reference: new expert j of a kept/copied tensor holds old expert sources[j]'s values (-1: zeros).
void expect_rows_from(const Tensor& got, const std::vector<int64_t>& sources) {
  ASSERT_EQ(got.shape(), (Shape{static_cast<int64_t>(sources.size()), 2, 3}));
  for (size_t j = 0; j < sources.size(); ++j)
    for (int i = 0; i < 6; ++i)
      EXPECT_EQ(got.f32()[j * 6 + i], sources[j] < 0 ? 0.f : static_cast<float>(100 * sources[j] + i + 1))
          << "expert " << j << " element " << i;
}
void expect_columns_from(const Tensor& got, const std::vector<int64_t>& sources) {
  const int64_t E = static_cast<int64_t>(sources.size());
  ASSERT_EQ(got.shape(), (Shape{2, E}));
  for (int r = 0; r < 2; ++r)
    for (int64_t j = 0; j < E; ++j)
      EXPECT_EQ(got.f32()[r * E + j], sources[j] < 0 ? 0.f : static_cast<float>(10 * r + sources[j] + 1));
}

TEST(ExpertEdit, KeepRenumbersEveryExpertIndexedTensor) {
  const ExpertEdit edit = keep_experts_edit(4, {1, 3});
  expect_rows_from(apply_expert_edit(edit, "layers.0.moe.w_in", expert_rows(4)), {1, 3});
  expect_rows_from(apply_expert_edit(edit, "adamw.v.layers.0.moe.w_out", expert_rows(4)), {1, 3});
  expect_columns_from(apply_expert_edit(edit, "layers.0.moe.w_gate", gate_columns(4)), {1, 3});
  expect_columns_from(apply_expert_edit(edit, "sgd.momentum.layers.0.moe.w_gate", gate_columns(4)), {1, 3});
  const Tensor bias = apply_expert_edit(edit, "layers.0.moe.selection_bias", Tensor::from({4}, {5, 6, 7, 8}));
  EXPECT_EQ(bias.f32()[0], 6);
  EXPECT_EQ(bias.f32()[1], 8);
}

TEST(ExpertEdit, AddedCopiesTakeWeightsButNotOptimizerState) {
  const ExpertEdit edit = add_experts_edit(3, 2, 1);
  expect_rows_from(apply_expert_edit(edit, "layers.2.moe.w_in", expert_rows(3)), {0, 1, 2, 1, 1});
  expect_rows_from(apply_expert_edit(edit, "adamw.m.layers.2.moe.w_in", expert_rows(3)), {0, 1, 2, -1, -1});
  expect_columns_from(apply_expert_edit(edit, "layers.2.moe.w_gate", gate_columns(3)), {0, 1, 2, 1, 1});
  expect_columns_from(apply_expert_edit(edit, "adamw.v.layers.2.moe.w_gate", gate_columns(3)), {0, 1, 2, -1, -1});
}

TEST(ExpertEdit, FreshExpertsAreDrawnByPositionWithZeroRouterColumns) {
  ExpertEdit edit = add_experts_edit(2, 2, -1);
  edit.seed = 77;
  edit.init_std = 0.5f;
  edit.out_scale = 0.25f;
  const Tensor w_in = apply_expert_edit(edit, "layers.0.moe.w_in", expert_rows(2));
  const Tensor w_out = apply_expert_edit(edit, "layers.0.moe.w_out", expert_rows(2));
  for (int64_t j = 2; j < 4; ++j)
    for (int i = 0; i < 6; ++i) {
      const uint64_t counter = static_cast<uint64_t>(j * 6 + i);
      EXPECT_EQ(w_in.f32()[j * 6 + i], 0.5f * standard_normal(stream_id(77, "layers.0.moe.w_in"), counter));
      EXPECT_EQ(w_out.f32()[j * 6 + i], 0.125f * standard_normal(stream_id(77, "layers.0.moe.w_out"), counter));
    }
  expect_rows_from(w_in.rows(0, 2), {0, 1});
  expect_columns_from(apply_expert_edit(edit, "layers.0.moe.w_gate", gate_columns(2)), {0, 1, -1, -1});
  expect_rows_from(apply_expert_edit(edit, "adamw.m.layers.0.moe.w_in", expert_rows(2)), {0, 1, -1, -1});
}

TEST(ExpertEdit, SplitCopiesArePerturbedTwinsWithTheirState) {
  const ExpertEdit edit = split_experts_edit(3, {2, 0}, 0.01f);
  const Tensor w = apply_expert_edit(edit, "layers.1.moe.w_out", expert_rows(3));
  ASSERT_EQ(w.dim(0), 5);
  expect_rows_from(w.rows(0, 3), {0, 1, 2});
  const int64_t from[] = {2, 0};
  for (int64_t j = 3; j < 5; ++j)
    for (int i = 0; i < 6; ++i) {
      const float original = static_cast<float>(100 * from[j - 3] + i + 1);
      const float z = standard_normal(stream_id(0, "split.layers.1.moe.w_out"), static_cast<uint64_t>(j * 6 + i));
      EXPECT_EQ(w.f32()[j * 6 + i], original * (1.0f + 0.01f * z));
      EXPECT_NE(w.f32()[j * 6 + i], original);  // z == 0 exactly has probability ~0
    }
  expect_rows_from(apply_expert_edit(edit, "adamw.m.layers.1.moe.w_out", expert_rows(3)), {0, 1, 2, 2, 0});
  expect_columns_from(apply_expert_edit(edit, "layers.1.moe.w_gate", gate_columns(3)), {0, 1, 2, 2, 0});
}

TEST(ExpertEdit, ExpertAxisByName) {
  int64_t layer = -1;
  EXPECT_EQ(expert_axis("layers.3.moe.w_gate", &layer), 1);
  EXPECT_EQ(layer, 3);
  EXPECT_EQ(expert_axis("adamw.m.layers.4.moe.w_in", &layer), 0);
  EXPECT_EQ(layer, 4);
  EXPECT_EQ(expert_axis("layers.1.moe.selection_bias", &layer), 0);
  EXPECT_EQ(expert_axis("layers.1.shared.w_in", &layer), -1);
  EXPECT_EQ(expert_axis("layers.1.ffn.w_in", &layer), -1);
  EXPECT_EQ(expert_axis("embedding", &layer), -1);
}

// ---- The grammar ---------------------------------------------------------------------------------

TEST(ExpertSchedule, ParsesEveryKindOfEvent) {
  const std::vector<ScheduleEvent> e = parse_expert_schedule(
      " at 10 remove 2,5 ;at 20 add 3; at 30 split 1 noise 0.05;when share < 0.02 for 3 remove min 4; "
      "when share > 0.4 split max 16;");
  ASSERT_EQ(e.size(), 5u);
  EXPECT_EQ(e[0].text, "at 10 remove 2,5");
  EXPECT_EQ(e[0].step, 10);
  EXPECT_EQ(e[0].action, ScheduleAction::Remove);
  EXPECT_EQ(e[0].experts, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(e[1].count, 3);
  EXPECT_EQ(e[2].action, ScheduleAction::Split);
  EXPECT_FLOAT_EQ(e[2].noise, 0.05f);
  EXPECT_TRUE(e[3].conditional());
  EXPECT_EQ(e[3].action, ScheduleAction::Remove);
  EXPECT_DOUBLE_EQ(e[3].share, 0.02);
  EXPECT_EQ(e[3].intervals, 3);
  EXPECT_EQ(e[3].bound, 4);
  EXPECT_EQ(e[4].action, ScheduleAction::Split);
  EXPECT_EQ(e[4].intervals, 1);
  EXPECT_EQ(e[4].bound, 16);
  EXPECT_EQ(e[4].index, 5);
  EXPECT_TRUE(parse_expert_schedule("").empty());
  EXPECT_EQ(schedule_text(e), "at 10 remove 2,5; at 20 add 3; at 30 split 1 noise 0.05; when share < 0.02 for 3 "
                              "remove min 4; when share > 0.4 split max 16");
}

TEST(ExpertSchedule, BadTextNamesTheEventAndTheGrammar) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"at 10 remove 1; at x add 2", "event 2 (\"at x add 2\"): step 'x' is not an integer >= 1"},
      {"at 0 add 2", "step '0' is not an integer >= 1"},
      {"at 10 remve 1", "unknown action 'remve'"},
      {"at 10 add", "ends where the number of experts should follow"},
      {"at 10 add 0", "number of experts '0' is not an integer >= 1"},
      {"at 10 remove 1,1", "expert ids '1,1' repeat"},
      {"at 10 remove 1,,2", "expert id '' is not an integer >= 0"},
      {"at 10 split 1 noise 2", "noise '2' is not a number in [1e-06, 1]"},
      {"at 10 add 2 now", "unexpected 'now'"},
      {"sometimes add 2", "an event starts with 'at' or 'when', not 'sometimes'"},
      {"when load < 0.1 remove", "a condition starts \"when share\""},
      {"when share = 0.1 remove", "the comparison '=' is not '<' or '>'"},
      {"when share < 1.5 remove", "share '1.5' is not a number in [0, 1]"},
      {"when share < 0.1 split", "a share < X condition removes experts, not 'split'"},
      {"when share > 0.1 for 0 split", "log intervals '0' is not an integer >= 1"},
  };
  for (const auto& [text, want] : cases) {
    const std::string msg = test::error_message([&] { parse_expert_schedule(text); });
    EXPECT_CONTAINS(msg, "moe.schedule event", want, "accepted: events separated by ';'") << text;
  }
  // Through the config, on every rank alike: "config: " and the key.
  EXPECT_CONTAINS(test::error_message([&] { parse_train_config("", "t.yaml", {"moe.schedule=at 1 grow 2"}); }),
                  "config: moe.schedule event 1 (\"at 1 grow 2\"): unknown action 'grow'");
}

// ---- Validation against the layout -------------------------------------------------------------

std::string layout_error(const std::string& schedule, int world, const std::vector<std::string>& more = {}) {
  std::vector<std::string> overrides = {"moe.num_experts=4", "moe.top_k=2", "run.steps=100",
                                        "moe.schedule=" + schedule};
  overrides.insert(overrides.end(), more.begin(), more.end());
  const TrainConfig cfg = parse_train_config("", "t.yaml", overrides);
  try {
    validate_for_world(cfg, world);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(ExpertSchedule, StepChangesAreCheckedAgainstTheLayoutInStepOrder) {
  EXPECT_EQ(layout_error("at 10 remove 1,2; at 20 add 4; at 30 split 0,3", 2), "");
  EXPECT_EQ(layout_error("at 30 split 0,3; at 20 add 4; at 10 remove 1,2", 2), "");  // applied in step order
  EXPECT_CONTAINS(layout_error("at 10 remove 1", 2), "config: moe.schedule event 1 (\"at 10 remove 1\")",
                  "takes the layers from 4 to 3 experts", "not divisible by ep = 2");
  EXPECT_EQ(layout_error("at 10 remove 1", 1), "");
  EXPECT_CONTAINS(layout_error("at 10 remove 0,1,2", 1), "4 to 1 experts", "top_k");
  EXPECT_CONTAINS(layout_error("at 10 remove 0,1,2,3", 1), "removes every expert");
  EXPECT_EQ(layout_error("at 10 add 2; at 20 remove 4,5", 2), "");
  EXPECT_CONTAINS(layout_error("at 20 add 2; at 10 remove 5", 1), "event 2", "expert 5 does not exist then",
                  "experts 0..3 at step 10");
  EXPECT_CONTAINS(layout_error("at 10 remove 4", 1), "expert 4 does not exist then: the layers have experts 0..3");
  EXPECT_CONTAINS(layout_error("at 101 add 2", 2), "step 101 is after the run's last step (run.steps = 100)");
  EXPECT_CONTAINS(layout_error("at 10 add 2", 2, {"moe.routing_groups=4", "moe.top_groups=2"}), "4 to 6 experts",
                  "routing_groups");
}

TEST(ExpertSchedule, ConditionsAreCheckedAgainstTheLayout) {
  EXPECT_EQ(layout_error("when share < 0.01 for 3 remove min 2; when share > 0.5 split max 8", 2), "");
  EXPECT_EQ(layout_error("when share < 0.01 remove min 3", 1), "");
  EXPECT_CONTAINS(layout_error("when share < 0.01 remove min 3", 2), "min 3 is not a multiple of 2");
  EXPECT_CONTAINS(layout_error("when share > 0.5 split max 6", 4), "max 6 is not a multiple of 4");
  EXPECT_CONTAINS(layout_error("when share < 0.01 remove min 1", 1), "moe.num_experts = 1", "top_k");
  EXPECT_CONTAINS(layout_error("when share < 0.01 remove min 8", 2), "min 8 is more than the 4 experts");
  EXPECT_CONTAINS(layout_error("when share > 0.5 split; at 10 remove 1", 1), "event 2",
                  "names experts by id in a schedule with conditions");
  EXPECT_CONTAINS(layout_error("when share > 0.5 split; at 10 add 1", 2),
                  "adds 1 experts in a schedule with conditions; accepted there: a multiple of 2");
  EXPECT_EQ(layout_error("when share > 0.5 split; at 10 add 2", 2), "");
}

// ---- When the runner's changes come ------------------------------------------------------------

TrainConfig runner_config(const std::string& schedule) {
  return parse_train_config("", "t.yaml",
                            {"moe.num_experts=4", "moe.top_k=1", "model.n_layers=2", "model.moe_every=1",
                             "run.steps=100", "moe.schedule=" + schedule});
}

// Two MoE layers with the same counts.
std::vector<std::vector<int64_t>> both(std::vector<int64_t> counts) { return {counts, counts}; }

TEST(ExpertScheduleRunner, StepEventsComeAtTheirStepFromTheExpertsLeft) {
  ExpertScheduleRunner r(runner_config("at 5 remove 1,2; at 5 add 2; at 9 split 0"), 1, 2);
  EXPECT_TRUE(r.due(4).empty());
  const std::vector<ExpertChange> c = r.due(5);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].old_experts, 4);
  EXPECT_EQ(c[0].new_experts, 2);
  EXPECT_EQ(c[0].what[1], "removed experts 1,2");
  EXPECT_EQ(c[1].old_experts, 2);
  EXPECT_EQ(c[1].new_experts, 4);
  EXPECT_EQ(c[1].what[0], "added fresh experts 2,3");
  EXPECT_EQ(c[1].why, "moe.schedule event 2 (\"at 5 add 2\")");
  EXPECT_EQ(r.remaining(5), "at 9 split 0");
  const std::vector<ExpertChange> s = r.due(9);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].what[0], "split expert 0 into 0 and 4");
  EXPECT_EQ(r.remaining(9), "");
}

TEST(ExpertScheduleRunner, RemoveFiresWhenAndOnlyWhenTheShareStaysLowLongEnough) {
  ExpertScheduleRunner r(runner_config("when share < 0.05 for 3 remove"), 1, 2);
  // Expert 3 gets 1% for two intervals, then 10% (the streak breaks), then 1% three times.
  const std::vector<int64_t> low = {40, 30, 29, 1}, ok = {40, 30, 20, 10};
  int64_t step = 0;
  for (const auto& counts : {low, low, ok, low, low}) {
    r.observe(++step, both(counts));
    EXPECT_TRUE(r.due(step).empty()) << "step " << step;
  }
  r.observe(++step, both(low));
  const std::vector<ExpertChange> c = r.due(step);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].new_experts, 3);
  EXPECT_EQ(c[0].what[0], "removed expert 3 (share 0.0100)");
  // The streaks restart after a change.
  r.observe(++step, both({40, 30, 30}));
  EXPECT_TRUE(r.due(step).empty());
}

TEST(ExpertScheduleRunner, ConditionsChangeMultiplesOfEpWithinTheirBounds) {
  // ep = 2: one overloaded expert is split with the next busiest, to keep E divisible by 2.
  ExpertScheduleRunner split(runner_config("when share > 0.5 split max 8"), 2, 2);
  split.observe(1, both({10, 70, 5, 15}));
  std::vector<ExpertChange> c = split.due(1);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].new_experts, 6);
  EXPECT_EQ(c[0].what[0], "split expert 1 into 1 and 4, 3 into 3 and 5 (share 0.7000 0.1500)");
  split.observe(2, both({5, 35, 5, 5, 35, 15}));
  EXPECT_TRUE(split.due(2).empty());  // no share above 0.5
  split.observe(3, both({5, 60, 5, 5, 20, 5}));
  c = split.due(3);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].new_experts, 8);  // max 8
  split.observe(4, both({5, 60, 5, 5, 10, 5, 5, 5}));
  EXPECT_TRUE(split.due(4).empty());  // at the bound

  // ep = 2: one dead expert is not enough to remove (that would leave 3); two are. The layers remove
  // the same number: the fewer candidates of any layer.
  ExpertScheduleRunner remove(runner_config("when share < 0.05 remove"), 2, 2);
  remove.observe(1, both({50, 48, 1, 1}));
  c = remove.due(1);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].new_experts, 2);
  remove.observe(2, both({99, 1}));
  EXPECT_TRUE(remove.due(2).empty());  // 2 experts: top_k 1 would allow 1, but ep 2 does not
  ExpertScheduleRunner differ(runner_config("when share < 0.05 remove"), 2, 2);
  differ.observe(1, {{50, 48, 1, 1}, {50, 40, 9, 1}});
  EXPECT_TRUE(differ.due(1).empty());  // layer 1 has one candidate only
}

TEST(ExpertScheduleRunner, StreaksSurviveACheckpoint) {
  ExpertScheduleRunner a(runner_config("when share < 0.05 for 2 remove"), 1, 2);
  a.observe(1, both({50, 48, 1, 1}));
  ExpertScheduleRunner b(runner_config("when share < 0.05 for 2 remove"), 1, 2);
  EXPECT_TRUE(b.from_counters(a.to_counters()));
  b.observe(2, both({50, 48, 1, 1}));
  EXPECT_EQ(b.due(2).size(), 1u);
  EXPECT_FALSE(b.from_counters({1, 2, 3}));
}

TEST(RoutingCounts, FollowAChangeOfExperts) {
  RoutingCounts counts(1, 3, 2);
  counts.kept_total = {{10, 20, 30}};
  counts.domain = {{1, 2, 3, 4, 5, 6}};
  counts.follow({split_experts_edit(3, {2}, 0.01f)});
  EXPECT_EQ(counts.num_experts, 4);
  EXPECT_EQ(counts.kept_total[0], (std::vector<int64_t>{10, 20, 30, 0}));
  counts.follow({keep_experts_edit(4, {0, 2, 3})});
  EXPECT_EQ(counts.kept_total[0], (std::vector<int64_t>{10, 30, 0}));
  EXPECT_EQ(counts.domain[0], (std::vector<int64_t>{1, 3, 0, 4, 6, 0}));
  EXPECT_EQ(counts.routed[0].size(), 3u);
}

}  // namespace
}  // namespace moe
