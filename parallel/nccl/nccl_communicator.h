// The NCCL data communicator: collectives between the ranks' GPUs, set up over a host control
// communicator (which broadcasts NCCL's unique id). A build without NCCL links the stub in
// parallel/no_nccl/, which says so.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace moe {

// Collective over `control`: a communicator of the same ranks whose collectives run on `gpu` (this
// rank's device). Throws InvalidArgument "... not built with NCCL" in a build without it.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& control, int gpu);

}  // namespace moe
