// safetensors files (https://github.com/huggingface/safetensors): writing tensors as one file or
// Hugging Face's sharded form (model.safetensors.index.json + model-0000i-of-0000N.safetensors), and
// reading a Hugging Face model directory in either form.
//
// A file is: 8 bytes little-endian header length N; N bytes of JSON
//   {"<name>": {"dtype": "F32"|"I32", "shape": [...], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string value>", ...}}
// padded with spaces to a multiple of 8; then the tensors' raw little-endian bytes, back to back in
// the header's order, offsets counted from the start of that data section.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "tools/ckpt/ckpt_data.h"

namespace moe::ckpt {

// A JSON string literal for s (quotes, backslashes and control characters escaped; UTF-8 passed through).
std::string json_string(const std::string& s);

// The header of one safetensors file holding `tensors` (in that order) with `metadata`, padded with
// spaces to a multiple of 8 bytes; *data_bytes is the size of the data section that follows.
std::string safetensors_header(const std::vector<const TensorInfo*>& tensors,
                               const std::map<std::string, std::string>& metadata, uint64_t* data_bytes);

// Reads one tensor's data: a CPU tensor of info.shape and info.dtype. Throws CheckpointError on failure.
using TensorReader = std::function<Tensor(const TensorInfo& info)>;

// The tensors of checkpoint `reader` as read_tensor reads them (CRC-checked).
TensorReader checkpoint_tensor_reader(const CheckpointReader& reader);

// Writes `tensors` (names, shapes, dtypes; their data from `read`) into directory `dir` (which must exist): as
// dir/model.safetensors when their bytes total at most max_shard_bytes, otherwise as shards of at
// most max_shard_bytes each (a tensor larger than that gets a shard of its own), in the given order,
// named model-00001-of-0000N.safetensors, plus model.safetensors.index.json
// {"metadata": {"total_size": bytes, <metadata>...}, "weight_map": {"<name>": "<shard file>"}}.
// Every file carries `metadata` as its __metadata__. Tensors are read one at a time.
// Returns the names of the files written. Throws CheckpointError on a read or write failure.
std::vector<std::string> write_safetensors(const TensorReader& read, const std::vector<TensorInfo>& tensors,
                                           const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes,
                                           const std::string& dir);

// One tensor of a safetensors file, as its header describes it.
struct SafetensorsEntry {
  std::string file;   // the file's path
  std::string dtype;  // as the header spells it: "F32", "BF16", "F16", "I64", ...
  Shape shape;
  uint64_t begin = 0, end = 0;  // the data's byte range in the file (checked to lie inside it)
};

// The tensors of the Hugging Face model directory `dir` by name: dir/model.safetensors when it exists,
// else the files dir/model.safetensors.index.json's weight_map names. CheckpointError naming the file
// (and the tensor) for: neither file, an index or header that is not what safetensors writes (not
// JSON, no weight_map, a tensor's shape or data_offsets that do not fit its dtype or the file), a tensor
// in two files, a tensor the weight_map names that its file lacks.
std::map<std::string, SafetensorsEntry> read_safetensors_directory(const std::string& dir);

// Whether read_safetensors_f32 converts this dtype: F32, BF16 and F16.
bool is_float_dtype(const std::string& dtype);
// The tensor's values as float32 (BF16 and F16 converted exactly). CheckpointError naming the file and
// `name` when it cannot be read.
Tensor read_safetensors_f32(const SafetensorsEntry& entry, const std::string& name);

}  // namespace moe::ckpt
