// The NCCL data communicator: collectives between the ranks' GPUs, set up over a host control
// communicator (which broadcasts NCCL's unique id). A build without NCCL links the stub in
// parallel/no_nccl/, which says so.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace moe {

// Collective over `control` (a host communicator, MPI in a job, which must outlive the result): a
// communicator of the same ranks, in the same order, whose data collectives run between the ranks'
// GPUs. Makes `gpu` the calling thread's current CUDA device.
//  - all_reduce, all_to_all_v, all_to_all_blocks and the start_* forms take device memory of `gpu`
//    (or managed memory) and a CUDA Stream of `gpu` (Stream{Device::CUDA, cudaStream_t}; a null
//    handle is the default stream). They are enqueued on that stream (all_reduce as ncclAllReduce,
//    all_to_all_v as grouped ncclSend/ncclRecv of bytes, one pair per peer, all_to_all_blocks one
//    pair per non-empty block): the blocking forms have returned once enqueued and are
//    done when the stream has run them; a start_* request's wait() returns when the stream has run
//    the collective (and throws CommError when NCCL reports an error or the communicator was aborted).
//    A host stream, host memory or memory of another GPU throws CommError before anything is enqueued.
//  - all_to_all, all_gather, broadcast and barrier are host calls on host memory (counts, flags,
//    strings: the interface's control traffic) and run on `control`; barrier orders hosts, not streams.
//  - split(color, key) splits `control` and makes an NCCL communicator over the part.
// Before the first collective every rank checks its GPU, and the ranks agree: a rank without a CUDA
// device, a `gpu` out of range, or two ranks on one GPU (one NCCL communicator cannot hold both)
// throws InvalidArgument on every rank alike, with the first failing rank's message. Throws
// InvalidArgument "... not built with NCCL" in a build without it. Not thread-safe (one thread per rank).
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& control, int gpu);

// Whether this build has the NCCL communicator (false: make_nccl_communicator refuses). Pure.
bool nccl_built();

// Aborts (ncclCommAbort) every NCCL communicator of this process still live, so that no GPU kernel is
// left waiting for a peer, and returns how many it aborted (0 in a build without NCCL). For a process
// about to end because it is stuck (the step watchdog's timeout) or failed alone: the aborted
// communicators then refuse every call (CommError "... aborted") and the process should exit
// (mpi_abort). Thread-safe; meant for a thread other than the one blocked in a collective.
int abort_nccl_communicators();

}  // namespace moe
