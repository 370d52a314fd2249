// What a checkpoint's metadata must satisfy before anything is allocated from it: the one set of
// checks every reader goes through (CheckpointReader::open, hence moe-train's load and every
// moe-ckpt command), and that the writer applies before it writes a manifest.
#pragma once

#include <cstdint>
#include <string>

#include "core/checkpoint/checkpoint.pb.h"
#include "core/status.h"

namespace moe {

// Checks a manifest read from `path` as format version `version`, without touching any other file:
//   format_version equals `version`; run_id is set; step >= 0;
//   layout: world_size >= 1, ep >= 1 dividing world_size and num_experts >= 1,
//     experts_per_rank = num_experts / ep;
//   shards and rank_states: one per rank, in rank order, shard r's file "shard_<r, 5 digits>.bin";
//   state: 0 <= optimizer_steps <= step, 0 <= skipped_steps <= step,
//     0 <= consecutive_nonfinite <= skipped_steps;
//   expert_usage: one per MoE layer (as many as state.moe_layer_calls), layers ascending, each with
//     num_experts counts >= 0;
//   tensors: a name; expert -1 or in [0, num_experts); dtype float32 or int32; a shard's file; at most
//     8 dimensions, each >= 0, their product (zeros counted as 1, times num_experts for a slice) times
//     4 within int64; length = product x 4; each entry at the first 64-byte boundary after the previous
//     entry of its file, and each file's last entry ending at the shard's `bytes`; (name, expert)
//     unique; a name either one whole tensor or exactly one slice per expert 0..num_experts-1, all of
//     one shape and dtype; the shards' bytes summing to at most 2^63 - 1.
// All arithmetic is overflow-checked. Corruption naming `path` and the field, or Ok.
Status check_manifest(const checkpoint::Manifest& manifest, uint32_t version, const std::string& path);

// Checks that shard index `index` (read from `path`) is exactly shard `rank`'s part of the checked
// manifest `manifest` (read from `manifest_path`): the same run_id, step, rank, file and file_bytes,
// the manifest's entries of that file in the same order, and state equal to rank_states[rank].
// Corruption naming both files and the field, or Ok.
Status check_shard_index(const checkpoint::ShardIndex& index, const std::string& path,
                         const checkpoint::Manifest& manifest, const std::string& manifest_path, int rank);

}  // namespace moe
