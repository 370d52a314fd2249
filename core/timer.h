// Wall-clock timing for phase breakdowns and benchmarks.
#pragma once

#include <chrono>

#include "core/backend.h"

namespace moe {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Adds the seconds since the previous lap() (or construction) to *slot on each lap(). On a GPU the
// work of a phase runs after the host has queued it, so a timer for Device::CUDA waits for the device
// at each lap (and at construction and skip()): its phase times are right, at the cost of the host
// no longer running ahead of the GPU across the laps.
class LapTimer {
 public:
  explicit LapTimer(Device device = Device::CPU) : device_(device), last_(now()) {}
  void lap(double* slot) {
    const double t = now();
    *slot += t - last_;
    last_ = t;
  }
  // Starts the next lap now, the time since the previous lap counted nowhere (a callee timed it).
  void skip() { last_ = now(); }

 private:
  double now() const {
    if (device_ == Device::CUDA) cuda::synchronize();
    return now_seconds();
  }
  Device device_;
  double last_;
};

}  // namespace moe
