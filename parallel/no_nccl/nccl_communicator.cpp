// The NCCL communicator of a build without NCCL (parallel/nccl/nccl_communicator.h): it refuses.
#include "parallel/nccl/nccl_communicator.h"

#include "core/check.h"

namespace moe {

std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, int) {
  throw InvalidArgument("make_nccl_communicator: this build was not built with NCCL");
}

bool nccl_built() { return false; }

int abort_nccl_communicators() { return 0; }  // there are none

}  // namespace moe
