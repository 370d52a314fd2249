// When the CPU kernels' OpenMP loops are worth running on more than one thread.
#pragma once

#include <cstdint>

namespace moe::cpu {

// Waking an OpenMP team costs microseconds on an idle machine and up to a scheduler time slice when
// the cores are oversubscribed (tests and builds running beside us); below ~32k elements (~10 us of
// single-thread work) one thread is faster. Loops use it as `#pragma omp parallel for if (...)`.
constexpr int64_t kMinParallelElements = int64_t{1} << 15;

}  // namespace moe::cpu
