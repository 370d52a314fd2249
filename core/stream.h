// Stream: the execution context that device work and collectives run in. On the host (Device::CPU)
// work runs in program order, and the handle is null. A device backend's handle is its own stream
// object (a cudaStream_t for CUDA; null there means the device's default stream), opaque to core.
#pragma once

#include "core/tensor.h"

namespace moe {

struct Stream {
  Device device = Device::CPU;
  void* handle = nullptr;  // the backend's stream, not owned; null on the host

  // The host's in-order context: what every CPU computation and MPI collective runs in.
  static Stream host() { return Stream{}; }
};

}  // namespace moe
