// What the commands that write a new checkpoint (reshard, prune-experts, add-experts, upcycle) print
// once it is written: their notes, the result, and how to train from it.
#pragma once

#include <string>
#include <vector>

#include "tools/ckpt/ckpt_data.h"

namespace moe::ckpt {

// Prints each note as "note: ...", then the result written to `out` (step, run, experts, layout
// world_size x ep), a note when the data position is not a whole number of global batches of
// world_size ranks, and the moe-train command line that starts from it.
void report_written(const std::string& out, const CheckpointData& data, int world_size, int ep,
                    const std::vector<std::string>& notes);

}  // namespace moe::ckpt
