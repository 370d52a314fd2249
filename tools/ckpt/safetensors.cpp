// safetensors export (tools/ckpt/safetensors.h).
#include "tools/ckpt/safetensors.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/check.h"

namespace moe::ckpt {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

namespace {

std::string metadata_json(const std::map<std::string, std::string>& metadata) {
  std::string out = "{";
  for (const auto& [k, v] : metadata) {
    if (out.size() > 1) out += ',';
    out += json_string(k);
    out += ':';
    out += json_string(v);
  }
  return out + "}";
}

// Writes all of [data, data + n) to f; CheckpointError naming the file on failure.
void write_or_throw(std::ofstream& f, const std::string& path, const void* data, uint64_t n) {
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!f) throw CheckpointError("cannot write '" + path + "': " + std::strerror(errno));
}

void write_file(const std::string& path, const CheckpointReader& reader, const std::vector<const TensorInfo*>& tensors,
                const std::map<std::string, std::string>& metadata) {
  uint64_t data_bytes = 0;
  const std::string header = safetensors_header(tensors, metadata, &data_bytes);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw CheckpointError("cannot create '" + path + "': " + std::strerror(errno));
  unsigned char len[8];
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));  // little-endian on any host
  write_or_throw(f, path, len, 8);
  write_or_throw(f, path, header.data(), header.size());
  for (const TensorInfo* t : tensors) {
    Tensor data;
    check(read_tensor(reader, *t, &data));
    const void* bytes = data.dtype() == DType::F32 ? static_cast<const void*>(data.f32()) : data.i32();
    write_or_throw(f, path, bytes, static_cast<uint64_t>(data.numel()) * 4);
  }
  f.flush();
  if (!f) throw CheckpointError("cannot write '" + path + "': " + std::strerror(errno));
}

}  // namespace

std::string safetensors_header(const std::vector<const TensorInfo*>& tensors,
                               const std::map<std::string, std::string>& metadata, uint64_t* data_bytes) {
  std::ostringstream os;
  os << "{\"__metadata__\":" << metadata_json(metadata);
  uint64_t offset = 0;
  for (const TensorInfo* t : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(t->numel()) * 4;
    os << "," << json_string(t->name) << ":{\"dtype\":\"" << (t->dtype == DType::F32 ? "F32" : "I32")
       << "\",\"shape\":[";
    for (size_t i = 0; i < t->shape.size(); ++i) os << (i ? "," : "") << t->shape[i];
    os << "],\"data_offsets\":[" << offset << "," << offset + bytes << "]}";
    offset += bytes;
  }
  os << "}";
  std::string header = os.str();
  header.append((8 - header.size() % 8) % 8, ' ');
  *data_bytes = offset;
  return header;
}

std::vector<std::string> write_safetensors(const CheckpointReader& reader, const std::vector<TensorInfo>& tensors,
                                           const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes,
                                           const std::string& dir) {
  MOE_ASSERT(max_shard_bytes > 0, "the caller checks --max-shard-bytes");
  // Shards in order: a new one starts when the next tensor would push a non-empty shard over the limit.
  std::vector<std::vector<const TensorInfo*>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const TensorInfo& t : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * 4;
    if (!shards.back().empty() && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&t);
    in_shard += bytes;
    total += bytes;
  }
  if (shards.size() == 1) {
    write_file(dir + "/model.safetensors", reader, shards[0], metadata);
    return {"model.safetensors"};
  }
  std::vector<std::string> files;
  std::ostringstream weight_map;
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_file(dir + "/" + name, reader, shards[i], metadata);
    files.push_back(name);
    for (const TensorInfo* t : shards[i])
      weight_map << (weight_map.tellp() > 0 ? ",\n    " : "\n    ") << json_string(t->name) << ": "
                 << json_string(name);
  }
  std::string index_meta = "{\"total_size\": " + std::to_string(total);
  for (const auto& [k, v] : metadata) index_meta += ", " + json_string(k) + ": " + json_string(v);
  index_meta += "}";
  const std::string index =
      "{\n  \"metadata\": " + index_meta + ",\n  \"weight_map\": {" + weight_map.str() + "\n  }\n}\n";
  const std::string path = dir + "/model.safetensors.index.json";
  std::ofstream f(path, std::ios::trunc);
  if (!f) throw CheckpointError("cannot create '" + path + "': " + std::strerror(errno));
  write_or_throw(f, path, index.data(), index.size());
  files.push_back("model.safetensors.index.json");
  return files;
}

}  // namespace moe::ckpt
