// The core of moe-ckpt: a checkpoint's tensors as whole tensors by name (expert slices stacked into
// (E, ...) under the parameter's name, so nothing depends on the layout it was saved with), and a
// list of such tensors written back as a checkpoint of any layout, atomically.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/checkpoint/checkpoint.h"
#include "launch/config/train_config.h"
#include "optim/expert_edit.h"
#include "optim/optimizer.h"
#include "core/status.h"
#include "core/tensor.h"

namespace moe::ckpt {

// A problem with a checkpoint's files (moe-ckpt exits 1); a problem with the command line is an
// InvalidArgument (moe-ckpt exits 2).
class CheckpointError : public std::runtime_error {
 public:
  explicit CheckpointError(const std::string& what) : std::runtime_error(what) {}
};

// Throws CheckpointError with the status' message unless it is ok.
void check(const Status& status);

// The checkpoint directory the command line's `path` names (resolve_checkpoint_dir,
// core/checkpoint/checkpoint_paths.h), named on stderr when it is the newest under a root;
// CheckpointError when there is none.
std::string resolve_checkpoint(const std::string& path);

// ---- names ----

// Optimizer state names: optimizer_state_names, is_optimizer_state and parameter_of (optim/optimizer.h).
// Model parameters: neither optimizer state nor a MoE layer's selection_bias (balancing state).
bool is_parameter(const std::string& name);
// Orders names with their digit runs compared as numbers: "layers.2.x" before "layers.10.x".
bool natural_less(const std::string& a, const std::string& b);

// ---- reading ----

// One logical tensor of a checkpoint: a whole tensor, or an expert tensor stacked from its slices.
struct TensorInfo {
  std::string name;
  bool expert = false;  // stacked from per-expert slices: shape (E, slice shape...)
  Shape shape;          // the whole tensor's shape
  DType dtype = DType::F32;
  std::vector<const checkpoint::TensorEntry*> parts;  // the whole tensor's entry, or slices 0..E-1 in
                                                      // order; they point into the reader's manifest
  int64_t numel() const { return numel_of(shape); }
};

// Every logical tensor of the checkpoint, in natural_less order of names. The reader's open() checked
// the structure (check_manifest): each expert tensor has exactly one slice for every expert id
// 0..E-1 (E = layout.num_experts), all of one shape and dtype; no whole tensor is repeated or also
// sliced; every dtype is float32 or int32; the parts' bytes add up to at most the shard files' sizes.
std::vector<TensorInfo> list_tensors(const CheckpointReader& reader);

// Reads one logical tensor into a new CPU tensor of info.shape, checking every part's CRC.
Status read_tensor(const CheckpointReader& reader, const TensorInfo& info, Tensor* out);

// Opens a checkpoint directory: CheckpointReader::open with its Status turned into CheckpointError.
std::unique_ptr<CheckpointReader> open_checkpoint(const std::string& dir);

// ---- a checkpoint in memory ----

struct NamedTensor {
  std::string name;
  Tensor data;          // CPU, contiguous
  bool expert = false;  // (E, ...): written as one slice per expert
};

// Everything a rewrite needs, with every tensor in memory (the whole checkpoint: fine for the sizes
// moe-ckpt is meant for; export, tensors, diff and verify stream instead).
struct CheckpointData {
  std::string dir;              // where it was read from
  checkpoint::Manifest header;  // run id, step, layout, state, expert usage, config_yaml; its tensors,
                                // shards and rank_states are cleared
  TrainConfig config;           // config_yaml parsed
  std::vector<NamedTensor> tensors;

  // The tensor called `name`, or null.
  NamedTensor* find(const std::string& name);
  // Removes the tensor called `name` if present.
  void remove(const std::string& name);
  // Puts the tensors back in natural_less order of names.
  void sort();
};

// Reads checkpoint `dir` completely. Throws CheckpointError for a damaged checkpoint, a config_yaml
// that does not parse, or a config whose moe.num_experts differs from layout.num_experts.
CheckpointData load_checkpoint_data(const std::string& dir);

// Parses a manifest's config_yaml; CheckpointError naming `dir` if it does not parse.
TrainConfig parse_manifest_config(const checkpoint::Manifest& manifest, const std::string& dir);

// ---- writing ----

// Fails with InvalidArgument ("'OUT' already exists; moe-ckpt does not overwrite") when `out` exists.
void require_new_output(const std::string& out);

// An output built under "<out>.tmp-<pid>" (a sibling of out, on the same file system) and renamed
// to `out` by commit(). The temporary is removed by the destructor unless committed. Not copyable.
class PendingOutput {
 public:
  explicit PendingOutput(const std::string& out);  // require_new_output(out), then creates the temporary
  ~PendingOutput();
  PendingOutput(const PendingOutput&) = delete;
  PendingOutput& operator=(const PendingOutput&) = delete;
  const std::string& tmp() const { return tmp_; }
  // Renames the temporary to `out`, refusing (InvalidArgument) if `out` appeared meanwhile.
  void commit();

 private:
  std::string out_, tmp_;
  bool committed_ = false;
};

// Writes `data` as a checkpoint saved by `world_size` ranks with expert-parallel size `ep`, into the
// new directory `out` (itself the checkpoint directory: MANIFEST and shards directly inside), as
// moe-train would have: each whole tensor once, ranks taking them in turn; expert e's slices in the
// shard of rank e / (E / ep) (the first expert-parallel group). The manifest keeps data.header's run
// id, step, state and expert usage, gets the new layout and config_yaml = to_yaml(data.config) with
// parallel.ep = ep and run.dir, checkpoint.dir and checkpoint.init_from cleared (a run started from it
// must not write into the source run's directories), and no rank states (per-rank counters do not
// survive a change of layout).
// Checks the config with validate_for_world (InvalidArgument) and that every expert tensor has
// E = config.moe.num_experts rows. Writes under a temporary name and renames; the result is reopened
// before the rename as a check.
void write_checkpoint_data(CheckpointData data, int world_size, int ep, const std::string& out);

// ---- tensor helpers (and gather_axis, optim/expert_edit.h) ----

// "world size 2, ep 2, 4 experts, 2 per rank"
std::string layout_text(const checkpoint::Layout& layout);

}  // namespace moe::ckpt
