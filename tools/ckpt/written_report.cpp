// The report of a written checkpoint (tools/ckpt/written_report.h).
#include "tools/ckpt/written_report.h"

#include <cstdio>

namespace moe::ckpt {

void report_written(const std::string& out, const CheckpointData& data, int world_size, int ep,
                    const std::vector<std::string>& notes) {
  for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
  std::printf("wrote %s: step %lld, run %s, %lld experts (top_k %lld), world size %d, ep %d\n", out.c_str(),
              static_cast<long long>(data.header.step()), data.header.run_id().c_str(),
              static_cast<long long>(data.config.moe.num_experts), static_cast<long long>(data.config.moe.top_k),
              world_size, ep);
  const uint64_t global_batch = static_cast<uint64_t>(world_size * data.config.data.batch_size);
  if (data.header.state().loader_sequences_done() % global_batch != 0)
    std::printf(
        "note: the data position (%llu sequences into the epoch) is not a whole number of global batches of "
        "%d ranks x data.batch_size %lld: moe-train needs a batch size whose global batch divides it\n",
        static_cast<unsigned long long>(data.header.state().loader_sequences_done()), world_size,
        static_cast<long long>(data.config.data.batch_size));
  std::printf(
      "train from it: moe-ckpt info %s --config > config.yaml; mpirun -np %d moe-train config.yaml "
      "checkpoint.init_from=%s run.dir=... (run.steps beyond %lld)\n",
      out.c_str(), world_size, out.c_str(), static_cast<long long>(data.header.step()));
}

}  // namespace moe::ckpt
