// The NCCL data communicator: collectives between the ranks' GPUs, set up over a host control
// communicator (which broadcasts NCCL's unique id). A build without NCCL links the stub in
// parallel/no_nccl/, which says so.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace moe {

// Collective over `control`: a communicator of the same ranks whose data collectives (all_reduce,
// all_to_all_v, their start_* forms) take buffers on `gpu` (this rank's device) and are enqueued on
// the CUDA Stream passed to each call (Stream{Device::CUDA, cudaStream_t}); they have returned once
// enqueued, and are done when the stream has run them. Host calls (counts, flags, strings) stay on
// `control`. Throws InvalidArgument "... not built with NCCL" in a build without it.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& control, int gpu);

}  // namespace moe
