// The collective checkpoint save: every rank writes its shard, the ranks agree that all succeeded,
// then rank 0 writes the manifest and the `latest` pointer (core/checkpoint/checkpoint.h has the
// format and the single-process steps).
#pragma once

#include <string>
#include <vector>

#include "core/checkpoint/checkpoint.h"
#include "parallel/communicator.h"

namespace moe {

// Collective over `world`. Each rank writes its tensors and rank_state; rank 0 then writes the manifest
// and the `latest` pointer, and prunes old checkpoints. Returns the checkpoint directory. Throws
// InvalidArgument naming the path on an I/O failure (an existing complete checkpoint is never touched
// by a failed save), on every rank.
std::string save_checkpoint(const SaveRequest& request, const std::vector<CheckpointTensor>& tensors,
                            const checkpoint::RankState& rank_state, Communicator& world);

}  // namespace moe
