// The step watchdog: a background thread that ends the job when one training step runs longer
// than a timeout (typically a rank stuck in a collective), naming the step and the phase, instead
// of letting every rank hang forever. The same thread stops the rank when its launcher has died
// (launcher_watch.h).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "launch/trainer/launcher_watch.h"

namespace moe {

class Watchdog {
 public:
  // on_timeout receives the message (e.g. "watchdog: rank 1: step 7 did not finish within 5 s, stuck
  // in phase 'gradient sync'") and must not return: the trainer prints it and aborts every rank.
  // `launcher` is checked at every poll, at least ten times a second (LauncherWatch::stop_if_gone).
  Watchdog(double timeout_s, int rank, LauncherWatch launcher, std::function<void(const std::string&)> on_timeout);
  ~Watchdog();  // stops the thread
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Starts the clock for `step`; phases name what the step is doing now. Thread-safe with the
  // watchdog thread; called by the training thread only.
  void begin_step(int64_t step);
  void phase(const char* name);  // name must be a string literal (stored as a pointer)
  void end_step();               // stops the clock until the next begin_step

 private:
  void run();

  const double timeout_s_;
  const int rank_;
  const LauncherWatch launcher_;
  std::function<void(const std::string&)> on_timeout_;
  std::atomic<int64_t> step_{-1};         // -1: no step running
  std::atomic<const char*> phase_{"start-up"};
  std::atomic<double> step_started_{0.0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace moe
