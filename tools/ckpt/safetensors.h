// Writing a checkpoint's tensors as safetensors (https://github.com/huggingface/safetensors): one
// file, or Hugging Face's sharded form (model.safetensors.index.json + model-0000i-of-0000N.safetensors).
//
// A file is: 8 bytes little-endian header length N; N bytes of JSON
//   {"<name>": {"dtype": "F32"|"I32", "shape": [...], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string value>", ...}}
// padded with spaces to a multiple of 8; then the tensors' raw little-endian bytes, back to back in
// the header's order, offsets counted from the start of that data section.
#pragma once

#include <cstdint>
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

// Writes `tensors` of the checkpoint `reader` into directory `dir` (which must exist): as
// dir/model.safetensors when their bytes total at most max_shard_bytes, otherwise as shards of at
// most max_shard_bytes each (a tensor larger than that gets a shard of its own), in the given order,
// named model-00001-of-0000N.safetensors, plus model.safetensors.index.json
// {"metadata": {"total_size": bytes, <metadata>...}, "weight_map": {"<name>": "<shard file>"}}.
// Every file carries `metadata` as its __metadata__. Tensors are read one at a time (CRC-checked).
// Returns the names of the files written. Throws CheckpointError on a read or write failure.
std::vector<std::string> write_safetensors(const CheckpointReader& reader, const std::vector<TensorInfo>& tensors,
                                           const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes,
                                           const std::string& dir);

}  // namespace moe::ckpt
