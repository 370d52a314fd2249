// Wall-clock timing for phase breakdowns and benchmarks.
#pragma once

#include <chrono>

namespace moe {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Adds the seconds since the previous lap() (or construction) to *slot on each lap().
class LapTimer {
 public:
  LapTimer() : last_(now_seconds()) {}
  void lap(double* slot) {
    double t = now_seconds();
    *slot += t - last_;
    last_ = t;
  }
  // Starts the next lap now, the time since the previous lap counted nowhere (a callee timed it).
  void skip() { last_ = now_seconds(); }

 private:
  double last_;
};

}  // namespace moe
