// Backend namespaces: moe::cpu and moe::cuda declare exactly the same op signatures (core/backend_ops.inc),
// so the front-ends in core/ops.cpp can dispatch to either with the same arguments.
// Backend functions assume their arguments were validated by the front-end (shapes, dtypes, device);
// they still check index values (ids, targets, slots), which only the backend can read.
#pragma once

#include <cstdint>
#include <vector>

#include "core/optim_ops.h"  // AdamWScalars
#include "core/tensor.h"

namespace moe::cpu {
#include "core/backend_ops.inc"
}  // namespace moe::cpu

namespace moe::cuda {
#include "core/backend_ops.inc"
}  // namespace moe::cuda
