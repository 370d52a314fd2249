// Parsing and validating moe.schedule (launch/config/expert_schedule.h).
#include "launch/config/expert_schedule.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <set>
#include <sstream>

#include "core/check.h"

namespace moe {

namespace {

const char kGrammar[] =
    "events separated by ';', each one of \"at STEP remove IDS\", \"at STEP add N\", \"at STEP split IDS "
    "[noise X]\", \"when share < X [for N] remove [min M]\", \"when share > X [for N] split [max M] [noise X]\" "
    "(IDS: expert ids separated by commas, e.g. 2,5)";

[[noreturn]] void bad_event(const ScheduleEvent& e, const std::string& what) {
  throw InvalidArgument("moe.schedule event " + std::to_string(e.index) + " (\"" + e.text + "\"): " + what +
                        "; accepted: " + kGrammar);
}

int64_t integer(const ScheduleEvent& e, const std::string& word, const char* what, int64_t lo) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(word.c_str(), &end, 10);
  if (word.empty() || *end != '\0' || errno == ERANGE || v < lo)
    bad_event(e, std::string(what) + " '" + word + "' is not an integer >= " + std::to_string(lo));
  return v;
}

double number(const ScheduleEvent& e, const std::string& word, const char* what, double lo, double hi) {
  char* end = nullptr;
  const double v = std::strtod(word.c_str(), &end);
  if (word.empty() || *end != '\0' || !std::isfinite(v) || v < lo || v > hi) {
    std::ostringstream os;
    os << what << " '" << word << "' is not a number in [" << lo << ", " << hi << "]";
    bad_event(e, os.str());
  }
  return v;
}

std::vector<int64_t> id_list(const ScheduleEvent& e, const std::string& word) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= word.size()) {
    const size_t comma = std::min(word.find(',', start), word.size());
    ids.push_back(integer(e, word.substr(start, comma - start), "expert id", 0));
    start = comma + 1;
  }
  if (std::set<int64_t>(ids.begin(), ids.end()).size() != ids.size()) bad_event(e, "expert ids '" + word + "' repeat");
  return ids;
}

ScheduleEvent parse_event(const std::string& text, int index) {
  ScheduleEvent e;
  e.text = text;
  e.index = index;
  std::istringstream in(text);
  std::vector<std::string> w;
  for (std::string word; in >> word;) w.push_back(word);
  size_t at = 0;
  auto next = [&](const char* what) -> const std::string& {
    if (at >= w.size()) bad_event(e, std::string("ends where ") + what + " should follow");
    return w[at++];
  };
  const std::string& kind = next("'at' or 'when'");
  if (kind == "at") {
    e.step = integer(e, next("the step"), "step", 1);
    const std::string& action = next("the action");
    if (action == "remove") {
      e.action = ScheduleAction::Remove;
      e.experts = id_list(e, next("the expert ids"));
    } else if (action == "add") {
      e.action = ScheduleAction::Add;
      e.count = integer(e, next("the number of experts"), "number of experts", 1);
    } else if (action == "split") {
      e.action = ScheduleAction::Split;
      e.experts = id_list(e, next("the expert ids"));
    } else {
      bad_event(e, "unknown action '" + action + "' (remove, add or split)");
    }
  } else if (kind == "when") {
    if (next("'share'") != "share") bad_event(e, "a condition starts \"when share\"");
    const std::string& op = next("'<' or '>'");
    if (op != "<" && op != ">") bad_event(e, "the comparison '" + op + "' is not '<' or '>'");
    e.share = number(e, next("the share"), "share", 0, 1);
    if (at < w.size() && w[at] == "for") {
      ++at;
      e.intervals = integer(e, next("the number of log intervals"), "log intervals", 1);
    }
    const std::string& action = next("the action");
    const bool remove = op == "<";
    if (action != (remove ? "remove" : "split"))
      bad_event(e, std::string("a share ") + op + " X condition " + (remove ? "removes" : "splits") +
                       " experts, not '" + action + "'");
    e.action = remove ? ScheduleAction::Remove : ScheduleAction::Split;
    if (at < w.size() && w[at] == (remove ? "min" : "max")) {
      ++at;
      e.bound = integer(e, next("the bound"), remove ? "min" : "max", 1);
    }
  } else {
    bad_event(e, "an event starts with 'at' or 'when', not '" + kind + "'");
  }
  if (e.action == ScheduleAction::Split && at < w.size() && w[at] == "noise") {
    ++at;
    e.noise = static_cast<float>(number(e, next("the noise"), "noise", 1e-6, 1));
  }
  if (at < w.size()) bad_event(e, "unexpected '" + w[at] + "'");
  return e;
}

}  // namespace

std::vector<ScheduleEvent> parse_expert_schedule(const std::string& text) {
  std::vector<ScheduleEvent> events;
  size_t start = 0;
  int index = 0;
  while (start < text.size()) {
    const size_t semi = std::min(text.find(';', start), text.size());
    std::string part = text.substr(start, semi - start);
    start = semi + 1;
    const size_t b = part.find_first_not_of(" \t\n"), e = part.find_last_not_of(" \t\n");
    if (b == std::string::npos) continue;  // "a; b;" and blank parts
    events.push_back(parse_event(part.substr(b, e - b + 1), ++index));
  }
  return events;
}

std::string schedule_text(const std::vector<ScheduleEvent>& events) {
  std::string s;
  for (const ScheduleEvent& e : events) s += (s.empty() ? "" : "; ") + e.text;
  return s;
}

std::string experts_problem(const MoEConfig& moe, int64_t num_experts, int64_t ep) {
  if (num_experts % ep != 0)
    return "moe.num_experts = " + std::to_string(num_experts) + " is not divisible by ep = " + std::to_string(ep);
  MoEConfig changed = moe;
  changed.num_experts = num_experts;
  try {
    changed.validate();
    changed.validate_routing_groups(ep);
  } catch (const InvalidArgument& e) {
    return "with moe.num_experts = " + std::to_string(num_experts) + ", moe." + e.what();
  }
  return "";
}

int64_t schedule_unit(const MoEConfig& moe, int64_t ep) {
  return moe.routing_groups > 0 ? std::lcm(ep, moe.routing_groups) : ep;
}

void validate_expert_schedule(const MoEConfig& moe, int64_t ep, int64_t steps) {
  std::vector<ScheduleEvent> events;
  try {
    events = parse_expert_schedule(moe.schedule);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("config: ") + e.what());
  }
  auto fail = [](const ScheduleEvent& e, const std::string& what) {
    throw InvalidArgument("config: moe.schedule event " + std::to_string(e.index) + " (\"" + e.text + "\"): " + what);
  };
  // A static map names experts by id (a table) or is drawn for one number of experts (hash): a change
  // of the experts would silently re-route every token.
  if (!events.empty() && is_static(moe.routing)) {
    throw InvalidArgument(std::string("config: moe.schedule needs learned routing; moe.routing = ") +
                          to_string(moe.routing) + " maps token ids to fixed experts (accepted: token_choice, expert_choice)");
  }
  const int64_t unit = schedule_unit(moe, ep);
  const bool conditions =
      std::any_of(events.begin(), events.end(), [](const ScheduleEvent& e) { return e.conditional(); });
  std::vector<ScheduleEvent> by_step;
  for (const ScheduleEvent& e : events) {
    if (e.conditional()) {
      const bool remove = e.action == ScheduleAction::Remove;
      if (e.bound == 0) continue;
      if (e.bound % unit != 0)
        fail(e, std::string(remove ? "min " : "max ") + std::to_string(e.bound) + " is not a multiple of " +
                    std::to_string(unit) + " (experts change in multiples of ep" +
                    (unit != ep ? " and moe.routing_groups" : "") + "); accepted: a multiple of " +
                    std::to_string(unit));
      const std::string problem = experts_problem(moe, e.bound, ep);
      if (!problem.empty()) fail(e, problem);
      if (remove && e.bound > moe.num_experts)
        fail(e, "min " + std::to_string(e.bound) + " is more than the " + std::to_string(moe.num_experts) +
                    " experts the run starts with (moe.num_experts)");
      continue;
    }
    if (e.step > steps)
      fail(e, "step " + std::to_string(e.step) + " is after the run's last step (run.steps = " + std::to_string(steps) +
                  "); accepted: 1.." + std::to_string(steps));
    if (conditions && e.action != ScheduleAction::Add)
      fail(e, "names experts by id in a schedule with conditions, which may have removed or renumbered them "
              "by then; accepted with conditions: \"at STEP add N\"");
    if (conditions && e.count % unit != 0)
      fail(e, "adds " + std::to_string(e.count) + " experts in a schedule with conditions; accepted there: a multiple "
              "of " + std::to_string(unit) + " (conditions keep moe.num_experts a multiple of it)");
    by_step.push_back(e);
  }
  std::stable_sort(by_step.begin(), by_step.end(),
                   [](const ScheduleEvent& a, const ScheduleEvent& b) { return a.step < b.step; });
  int64_t E = moe.num_experts;
  for (const ScheduleEvent& e : by_step) {
    for (int64_t id : e.experts)
      if (id >= E)
        fail(e, "expert " + std::to_string(id) + " does not exist then: the layers have experts 0.." +
                    std::to_string(E - 1) + " at step " + std::to_string(e.step));
    const int64_t n = static_cast<int64_t>(e.experts.size());
    const int64_t after = e.action == ScheduleAction::Remove ? E - n : e.action == ScheduleAction::Add ? E + e.count
                                                                                                      : E + n;
    const std::string problem = after < 1 ? "removes every expert" : experts_problem(moe, after, ep);
    if (!problem.empty())
      fail(e, "takes the layers from " + std::to_string(E) + " to " + std::to_string(after) + " experts, but " +
                  problem + "; accepted: changes that keep moe.num_experts divisible by ep = " + std::to_string(ep) +
                  " and valid for the moe section");
    E = after;
  }
}

}  // namespace moe
