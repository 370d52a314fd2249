// The collective checkpoint save (parallel/checkpoint_save.h).
#include "parallel/checkpoint_save.h"

#include "core/check.h"

namespace moe {

std::string save_checkpoint(const SaveRequest& req, const std::vector<CheckpointTensor>& tensors,
                            const checkpoint::RankState& rank_state, Communicator& world) {
  const std::string dir = checkpoint_step_dir(req.root, req.step);
  // Every rank reaches the same verdict from the shared file system before anything is written.
  const CheckpointListing existing = inspect_checkpoint(dir);
  MOE_REQUIRE(!existing.complete, "a complete checkpoint for step ", req.step, " already exists in '", dir,
              "'; it is left as it is");
  MOE_REQUIRE(!existing.damaged(), "'", dir, "' holds a damaged checkpoint for step ", req.step, " (",
              existing.problem, "); it is left as it is (a start with checkpoint.resume=auto moves it aside)");
  Status written = write_checkpoint_shard(dir, req, tensors, rank_state, world.rank());

  // Nobody writes the manifest unless every shard made it.
  const int failed_somewhere = all_reduce_value(world, written.ok() ? 0 : 1, ReduceOp::Max);
  if (failed_somewhere)
    throw InvalidArgument(written.ok() ? "checkpoint save at step " + std::to_string(req.step) +
                                             " failed on another rank; see its message"
                                       : "checkpoint save failed: " + written.message());
  if (world.rank() == 0) {
    written = write_checkpoint_manifest(dir, req, world.size());
    if (written.ok()) written = publish_checkpoint(req);
  }
  int failed = written.ok() ? 0 : 1;
  world.broadcast(&failed, sizeof failed, 0);
  if (failed) throw InvalidArgument(world.rank() == 0 ? "checkpoint save failed: " + written.message()
                                                      : "checkpoint save failed on rank 0; see its message");
  return dir;
}

}  // namespace moe
