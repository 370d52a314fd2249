// The step watchdog (launch/trainer/watchdog.h).
#include "launch/trainer/watchdog.h"

#include <algorithm>
#include <chrono>
#include <sstream>

#include "core/timer.h"

namespace moe {

Watchdog::Watchdog(double timeout_s, int rank, LauncherWatch launcher,
                   std::function<void(const std::string&)> on_timeout)
    : timeout_s_(timeout_s), rank_(rank), launcher_(launcher), on_timeout_(std::move(on_timeout)) {
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Watchdog::begin_step(int64_t step) {
  step_started_.store(now_seconds());
  phase_.store("start of step");
  step_.store(step);
}

void Watchdog::phase(const char* name) { phase_.store(name); }

void Watchdog::end_step() { step_.store(-1); }

void Watchdog::run() {
  // Checking a few times per timeout keeps the overshoot small without waking often; a dead
  // launcher is noticed within 0.1 s (a tiny model trains tens of steps in a second).
  const auto poll = std::chrono::duration<double>(std::clamp(timeout_s_ / 4.0, 0.01, 0.1));
  std::unique_lock<std::mutex> lock(mutex_);
  while (!wake_.wait_for(lock, poll, [this] { return stop_; })) {
    launcher_.stop_if_gone(rank_);
    const int64_t step = step_.load();
    if (step < 0) continue;
    const double elapsed = now_seconds() - step_started_.load();
    if (elapsed <= timeout_s_ || step != step_.load()) continue;
    std::ostringstream msg;
    msg << "watchdog: rank " << rank_ << ": step " << step << " did not finish within " << timeout_s_
        << " s (run.watchdog_timeout_s), stuck in phase '" << phase_.load() << "'";
    on_timeout_(msg.str());
  }
}

}  // namespace moe
