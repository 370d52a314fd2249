// Which device each rank trains on (run.device, parallel.backend) and whether it can compute in the
// precision asked for (model.precision): checked on every rank and agreed over the control
// communicator before anything starts, so that a build or a machine that cannot run what the config
// asks for stops every rank with one clear message.
#pragma once

#include <string>

#include "launch/config/train_config.h"
#include "parallel/communicator.h"
#include "parallel/local_rank.h"

namespace moe {

// What this rank has, for the refusal below: the build's backends and the machine's devices.
struct RankHardware {
  bool cuda_built = false;          // this build has the CUDA backend (core/cuda/)
  bool nccl_built = false;          // this build has the NCCL communicator (parallel/nccl/)
  int gpu_count = 0;                // CUDA devices this process can use
  int rank = 0;                     // world rank
  std::string host;                 // this machine's name
  int local_rank = 0;               // LocalPlacement::local_rank
  bool cpu_bf16_matmul = false;     // this CPU runs bfloat16 matrix products (core/cpu/gemm.h)
};

// Pure: why this rank cannot train as `cfg` asks, or "" when it can. In order: run.device = cuda in
// a build without CUDA, with no CUDA device on this machine (naming the rank and host), or with more
// ranks on the node than GPUs (gpu_for_local_rank's message, with the rank and host); then
// parallel.backend = nccl in a build without NCCL; then model.precision = bf16 with run.device = cpu on
// a CPU without bfloat16 matrix products.
std::string device_refusal(const TrainConfig& cfg, const RankHardware& hw);

// Collective over `world` (host values; call it on every rank before the first collective that
// moves tensors): this process's RankHardware (the CPU's bfloat16 products probed only for
// model.precision = bf16: bf16_matmul_supported), device_refusal, and agreement on it; then, for
// run.device = cuda, makes this rank's GPU (its local rank's, gpu_for_local_rank) the current device.
// Returns that GPU, or -1 for run.device = cpu. Throws InvalidArgument on every rank with the lowest
// refusing (or failing) rank's message.
int select_device(const TrainConfig& cfg, Communicator& world, const LocalPlacement& placement);

}  // namespace moe
