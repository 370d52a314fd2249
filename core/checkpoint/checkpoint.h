// Checkpoints: a directory per step holding one raw shard file per rank, a small protobuf index per
// shard, and a manifest written last. The format, field by field, is in docs/checkpoint-format.md.
//
//   <root>/step_00000100/shard_00000.bin     raw tensor bytes of rank 0, each at a 64-byte aligned offset
//   <root>/step_00000100/shard_00000.index   ShardIndex (checkpoint.proto): rank 0's entries and state
//   <root>/step_00000100/MANIFEST            Manifest: layout, config, step, every tensor's file,
//                                            offset, length and CRC32C; written last, by rank 0
// MANIFEST and the indexes are sealed with their CRC32C (core/checkpoint/metadata_file.h), so every
// byte is under a checksum; every reader checks them with core/checkpoint/manifest_check.h.
//   <root>/latest                            name of the newest complete checkpoint directory
//
// A checkpoint directory without MANIFEST is incomplete and is never loaded. Every file is written
// under a temporary name, fsynced and renamed; the manifest only after every rank has finished its
// shard; `latest` is replaced by rename. Version rule: format_version is bumped when a reader of the
// previous version could misread a checkpoint; readers reject versions newer than their own.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/checkpoint/checkpoint.pb.h"
#include "core/status.h"
#include "core/tensor.h"

namespace moe {

// 2: MANIFEST and shard indexes sealed with their CRC32C (MetadataFile). Version 1 is still read.
constexpr uint32_t kCheckpointFormatVersion = 2;

// One tensor this rank writes: a whole tensor (expert = -1) or one expert's slice.
struct CheckpointTensor {
  std::string name;
  int64_t expert = -1;
  Tensor data;  // CPU, float32 or int32, contiguous; its bytes are written as they are
};

struct SaveRequest {
  std::string root;            // checkpoint root directory, created if missing
  int64_t step = 0;
  checkpoint::Manifest header; // run_id, layout, config_yaml, state, expert_usage (tensors, shards and
                               // rank_states are filled in by save_checkpoint)
  int keep = 0;                // > 0: afterwards, delete complete checkpoints older than the newest `keep`
  bool test_kill_midway = false;  // test hook: the writing rank kills itself (SIGKILL) halfway through its shard
};

// The steps of a save, one process each (the collective save that runs them on every rank and
// agrees on the outcome is parallel/checkpoint_save.h):
//   <root>/step_<step>: the directory of request.step under request.root.
std::string checkpoint_step_dir(const std::string& root, int64_t step);
//   "shard_<rank, 5 digits>.<ext>": rank's shard file ("bin") or index ("index") in a checkpoint directory.
std::string checkpoint_shard_file(int rank, const char* ext);
//   True when `dir` holds a MANIFEST (a complete checkpoint, never overwritten).
bool has_manifest(const std::string& dir);
//   Creates `dir` if missing and writes rank `rank`'s shard file and index (temporary name, fsync, rename).
Status write_checkpoint_shard(const std::string& dir, const SaveRequest& request,
                              const std::vector<CheckpointTensor>& tensors, const checkpoint::RankState& rank_state,
                              int rank);
//   After every shard of the world_size ranks is in place: merges their indexes into the MANIFEST.
Status write_checkpoint_manifest(const std::string& dir, const SaveRequest& request, int world_size);
//   After the manifest: points <root>/latest at the checkpoint and deletes complete checkpoints older
//   than the newest request.keep (when keep > 0).
Status publish_checkpoint(const SaveRequest& request);

// Single-process writer (tools/moe_ckpt): writes the checkpoint directory `dir` itself (not a step_*
// directory under a root) exactly as a world of per_rank.size() ranks would have saved it: rank r's
// tensors into shard r with rank_states[r] in its index, then the manifest, with the same code as
// save_checkpoint. Uses request.step and request.header; request.root and request.keep are ignored
// and no `latest` pointer is written. `dir` is created if missing; a complete checkpoint there is
// refused (InvalidArgument). Status names the file on an I/O failure.
Status write_checkpoint_directory(const std::string& dir, const SaveRequest& request,
                                  const std::vector<std::vector<CheckpointTensor>>& per_rank,
                                  const std::vector<checkpoint::RankState>& rank_states);

// A checkpoint directory as found on disk. The one definition of complete, which resume, save and
// keep-K share: CheckpointReader::open accepts it. A directory that is not complete is either an
// interrupted save (no MANIFEST: the save of its step overwrites it) or damaged (a MANIFEST that
// does not open: a save refuses it, and a training start moves it aside, move_checkpoint_aside).
struct CheckpointListing {
  std::string dir;      // full path
  int64_t step = -1;
  bool complete = false;  // CheckpointReader::open accepts it
  bool has_manifest = false;  // MANIFEST exists (complete or damaged)
  uint64_t bytes = 0;     // total size of its files
  std::string problem;    // why it is incomplete or unreadable
  bool damaged() const { return has_manifest && !complete; }
};

// The step_* directories under root, oldest first. A missing root gives an empty list.
std::vector<CheckpointListing> list_checkpoints(const std::string& root);

// The checkpoint directory `dir` (step -1; bytes counted only by list_checkpoints).
CheckpointListing inspect_checkpoint(const std::string& dir);

// Renames the damaged checkpoint directory `dir` to <dir>.damaged-<n>, the smallest n >= 1 not yet
// taken (list_checkpoints no longer sees it, so keep-K never deletes it and a save can write the step
// anew; nothing in it is deleted). Returns the new path, or an IOError naming both paths.
Status move_checkpoint_aside(const std::string& dir, std::string* moved_to);

// The newest complete checkpoint under root, or "" if none.
std::string newest_complete_checkpoint(const std::string& root);

// Read access to one checkpoint. Thread-compatible.
class CheckpointReader {
 public:
  // Reads and checks MANIFEST and every shard index before anything is allocated from them: each
  // parses, is of a supported format version and (from version 2) matches its CRC32C; the manifest
  // passes check_manifest (core/checkpoint/manifest_check.h: every field in range, every size
  // overflow-checked, every entry in its place); every shard file is present with the recorded size;
  // every index is exactly its shard's part of the manifest (check_shard_index). Status names the file
  // and the field or problem. list_checkpoints and everything that loads a checkpoint go through it.
  static Status open(const std::string& dir, std::unique_ptr<CheckpointReader>* out);

  const checkpoint::Manifest& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_; }

  // The entry for (name, expert), or null.
  const checkpoint::TensorEntry* find(const std::string& name, int64_t expert = -1) const;

  // Reads an entry's bytes into `out` (numel * 4 bytes, matching the entry's shape) and checks its
  // CRC. Corruption names the file, the tensor and the expected and found CRC.
  Status read(const checkpoint::TensorEntry& entry, void* out) const;
  // Reads into a tensor, first checking that its shape equals the entry's.
  Status read(const checkpoint::TensorEntry& entry, Tensor& out) const;

  // Re-reads every entry checking its CRC, and the padding between entries (zeros): with open()'s
  // checks, every byte of the checkpoint. Returns one line per problem (file and tensor named); empty
  // when the checkpoint is sound.
  std::vector<std::string> verify() const;

 private:
  std::string dir_;
  checkpoint::Manifest manifest_;
};

std::string to_string_shape(const checkpoint::TensorEntry& e);  // "(4, 8)"

}  // namespace moe
