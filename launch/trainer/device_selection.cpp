// Which device each rank trains on: the per-rank refusal and the agreement on it.
#include "launch/trainer/device_selection.h"

#include <unistd.h>

#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/gemm.h"
#include "parallel/nccl/nccl_communicator.h"

namespace moe {

std::string device_refusal(const TrainConfig& cfg, const RankHardware& hw) {
  const std::string where = "rank " + std::to_string(hw.rank) + " on host " + hw.host;
  if (cfg.run.device == Device::CUDA) {
    if (!hw.cuda_built)
      return "run.device = cuda, but this build has no CUDA backend (built without the CUDA toolkit); rebuild "
             "where nvcc is found (cmake -DMOE_CUDA=ON), or use run.device = cpu";
    if (hw.gpu_count == 0)
      return "run.device = cuda, but " + where +
             " sees no CUDA device (none installed, no driver, or CUDA_VISIBLE_DEVICES hides them); run on a "
             "machine with a GPU, or use run.device = cpu";
    try {
      gpu_for_local_rank(hw.local_rank, hw.gpu_count);
    } catch (const InvalidArgument& e) {
      return "run.device = cuda, but " + where + ": " + e.what();
    }
  }
  if (cfg.parallel.backend == DataBackend::NCCL && !hw.nccl_built)
    return "parallel.backend = nccl, but this build has no NCCL (built without the CUDA toolkit or NCCL, or with "
           "-DMOE_NCCL=OFF); rebuild with NCCL, or use parallel.backend = mpi";
  if (cfg.model.precision == Precision::BF16 && cfg.run.device == Device::CPU && !hw.cpu_bf16_matmul)
    return "model.precision = bf16, but " + where +
           " has a CPU without bfloat16 matrix products (oneDNN has them only for CPUs with AVX-512, "
           "avx512_core, and not when ONEDNN_MAX_CPU_ISA is set below it); accepted: model.precision = fp32, or "
           "bf16 on CPUs with AVX-512 or with run.device = cuda";
  return "";
}

int select_device(const TrainConfig& cfg, Communicator& world, const LocalPlacement& placement) {
  RankHardware hw;
  hw.cuda_built = MOE_HAVE_CUDA;
  hw.nccl_built = nccl_built();
  hw.gpu_count = cuda::device_count();
  hw.rank = world.rank();
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  hw.host = host;
  hw.local_rank = placement.local_rank;
  hw.cpu_bf16_matmul = cfg.model.precision == Precision::BF16 && bf16_matmul_supported();
  throw_if_any_rank_failed(world, device_refusal(cfg, hw));
  if (cfg.run.device != Device::CUDA) return -1;
  const int gpu = gpu_for_local_rank(placement.local_rank, hw.gpu_count);
  std::string error;
  try {
    cuda::use_device(gpu);
  } catch (const std::exception& e) {
    error = "run.device = cuda, but rank " + std::to_string(hw.rank) + " on host " + hw.host + " cannot use GPU " +
            std::to_string(gpu) + ": " + e.what();
  }
  throw_if_any_rank_failed(world, error);
  return gpu;
}

}  // namespace moe
