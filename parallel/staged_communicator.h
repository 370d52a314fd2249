// A device data communicator over a host one (MPI, or the local one): each collective copies the
// GPU buffers to host memory, runs the host collective and copies the result back. The path for
// parallel.backend = mpi on GPUs, and the fallback where NCCL is missing; it costs two PCIe copies
// per collective, which NCCL avoids.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace moe {

// Wraps `host` (a host communicator, which the result owns). The data collectives (all_reduce,
// all_to_all_v, all_to_all_blocks, the start_* forms, which finish before returning) take a CUDA stream and device
// buffers; a host stream throws CommError. The copies synchronise the device first, so work already
// queued on the stream has finished before the data leaves. The host calls (all_to_all, all_gather,
// broadcast, barrier) pass through. split() wraps the host communicator's split.
std::unique_ptr<Communicator> make_staged_communicator(std::unique_ptr<Communicator> host);

}  // namespace moe
