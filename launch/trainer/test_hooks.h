// Fault injection for the end-to-end tests (tests/train_e2e.sh, tests/checkpoint_e2e.sh): moe-train's
// main reads it from the environment and hands it to the trainer, so no library code reads the
// environment for it.
//   MOE_TEST_NAN_STEPS=a:b     rank 0 writes NaN into a gradient at steps a..b (1-based, inclusive)
//   MOE_TEST_STALL=r:s         rank r stops in the gradient sync phase of step s
//   MOE_TEST_KILL_IN_SAVE=r:s  rank r kills itself (SIGKILL) halfway through writing its checkpoint shard of step s
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace moe {

struct TestHooks {
  int64_t nan_first = -1, nan_last = -1;
  int stall_rank = -1;
  int64_t stall_step = -1;
  int kill_in_save_rank = -1;
  int64_t kill_in_save_step = -1;

  bool nan_at(int64_t step) const { return step >= nan_first && step <= nan_last; }
  bool stall_at(int rank, int64_t step) const { return rank == stall_rank && step == stall_step; }
  bool kill_in_save_at(int rank, int64_t step) const { return rank == kill_in_save_rank && step == kill_in_save_step; }

  static TestHooks from_environment() {
    TestHooks h;
    read_pair("MOE_TEST_NAN_STEPS", &h.nan_first, &h.nan_last);
    int64_t rank = -1;
    read_pair("MOE_TEST_STALL", &rank, &h.stall_step);
    h.stall_rank = static_cast<int>(rank);
    rank = -1;
    read_pair("MOE_TEST_KILL_IN_SAVE", &rank, &h.kill_in_save_step);
    h.kill_in_save_rank = static_cast<int>(rank);
    return h;
  }

 private:
  // "a:b" from the variable `name` into *a and *b; both left as they are when unset or malformed.
  static void read_pair(const char* name, int64_t* a, int64_t* b) {
    long long x = 0, y = 0;
    const char* v = std::getenv(name);
    if (v != nullptr && std::sscanf(v, "%lld:%lld", &x, &y) == 2) {
      *a = x;
      *b = y;
    }
  }
};

}  // namespace moe
