// safetensors files, written and read (tools/ckpt/safetensors.h).
#include "tools/ckpt/safetensors.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/bfloat16.h"
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

void write_file(const std::string& path, const TensorReader& read, const std::vector<const TensorInfo*>& tensors,
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
    const Tensor data = read(*t);
    MOE_ASSERT(data.shape() == t->shape && data.dtype() == t->dtype, "a TensorReader returns what it is asked for");
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

TensorReader checkpoint_tensor_reader(const CheckpointReader& reader) {
  return [&reader](const TensorInfo& info) {
    Tensor data;
    check(read_tensor(reader, info, &data));
    return data;
  };
}

std::vector<std::string> write_safetensors(const TensorReader& read, const std::vector<TensorInfo>& tensors,
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
    write_file(dir + "/model.safetensors", read, shards[0], metadata);
    return {"model.safetensors"};
  }
  std::vector<std::string> files;
  std::ostringstream weight_map;
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_file(dir + "/" + name, read, shards[i], metadata);
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

// ---- reading ----

namespace {

using Json = nlohmann::json;

// Bytes per element of the dtypes safetensors defines; 0 for a name it does not.
uint64_t dtype_bytes(const std::string& dtype) {
  static const std::map<std::string, uint64_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

Json parse_json_file(const std::string& path, const std::string& text) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw CheckpointError("'" + path + "' is not JSON: " + e.what());
  }
}

std::string read_whole_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError("cannot read '" + path + "': " + std::strerror(errno));
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// The entries of one safetensors file's header, added to *out; CheckpointError naming the file.
void read_header(const std::string& path, std::map<std::string, SafetensorsEntry>* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError("cannot read '" + path + "': " + std::strerror(errno));
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  unsigned char len[8];
  f.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (!f || ec || n > file_size - 8)
    throw CheckpointError("'" + path + "' is not a safetensors file: its header length " + std::to_string(n) +
                          " does not fit its " + std::to_string(file_size) + " bytes");
  std::string text(n, '\0');
  f.read(text.data(), static_cast<std::streamsize>(n));
  const Json header = parse_json_file(path + "' (its header", text);
  if (!header.is_object()) throw CheckpointError("'" + path + "': its header is not a JSON object");
  const uint64_t data_start = 8 + n;
  for (const auto& [name, t] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = "'" + path + "': tensor '" + name + "'";
    if (out->count(name)) throw CheckpointError(where + " is also in '" + out->at(name).file + "'");
    if (!t.is_object() || !t.contains("dtype") || !t["dtype"].is_string() || !t.contains("shape") ||
        !t["shape"].is_array() || !t.contains("data_offsets") || !t["data_offsets"].is_array() ||
        t["data_offsets"].size() != 2)
      throw CheckpointError(where + " has no dtype, shape and data_offsets: " + t.dump());
    SafetensorsEntry e;
    e.file = path;
    e.dtype = t["dtype"].get<std::string>();
    uint64_t numel = 1;
    for (const Json& dim : t["shape"]) {
      if (!dim.is_number_unsigned()) throw CheckpointError(where + " has shape " + t["shape"].dump());
      e.shape.push_back(dim.get<int64_t>());
      numel *= dim.get<uint64_t>();
    }
    const Json& off = t["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw CheckpointError(where + " has data_offsets " + off.dump());
    e.begin = data_start + off[0].get<uint64_t>();
    e.end = data_start + off[1].get<uint64_t>();
    const uint64_t bytes = dtype_bytes(e.dtype);
    if (bytes != 0 && (e.end < e.begin || e.end - e.begin != numel * bytes || e.end > file_size))
      throw CheckpointError(where + " (" + e.dtype + ", shape " + t["shape"].dump() + ") has data_offsets " +
                            off.dump() + ", which do not match its size or lie outside the file");
    (*out)[name] = e;
  }
}

// IEEE half -> float, exact (normals, subnormals, infinities, NaN).
float float_from_f16(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float v;
  if (exponent == 0) v = std::ldexp(static_cast<float>(mantissa), -24);
  else if (exponent == 31) v = mantissa == 0 ? INFINITY : NAN;
  else v = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  return sign ? -v : v;
}

}  // namespace

std::map<std::string, SafetensorsEntry> read_safetensors_directory(const std::string& dir) {
  namespace fs = std::filesystem;
  std::map<std::string, SafetensorsEntry> out;
  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  if (fs::exists(single)) {
    read_header(single, &out);
    return out;
  }
  if (!fs::exists(index))
    throw CheckpointError("'" + dir + "' holds neither model.safetensors nor model.safetensors.index.json");
  const Json j = parse_json_file(index, read_whole_file(index));
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw CheckpointError("'" + index + "' has no \"weight_map\" object");
  std::map<std::string, std::string> files;  // file -> a tensor the weight_map puts there
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos)
      throw CheckpointError("'" + index + "': weight_map maps '" + name + "' to " + file.dump() +
                            "; accepted: a file name in the same directory");
    files.emplace(file.get<std::string>(), name);
  }
  for (const auto& [file, name] : files) read_header(dir + "/" + file, &out);
  for (const auto& [name, file] : j["weight_map"].items())
    if (!out.count(name) || out[name].file != dir + "/" + file.get<std::string>())
      throw CheckpointError("'" + index + "': weight_map puts '" + name + "' in '" + file.get<std::string>() +
                            "', which does not hold it");
  return out;
}

bool is_float_dtype(const std::string& dtype) { return dtype == "F32" || dtype == "BF16" || dtype == "F16"; }

Tensor read_safetensors_f32(const SafetensorsEntry& e, const std::string& name) {
  MOE_ASSERT(is_float_dtype(e.dtype), "the caller checks the dtype");
  std::ifstream f(e.file, std::ios::binary);
  std::string bytes(e.end - e.begin, '\0');
  f.seekg(static_cast<std::streamoff>(e.begin));
  f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw CheckpointError("cannot read tensor '" + name + "' of '" + e.file + "': " + std::strerror(errno));
  Tensor t = Tensor::empty(e.shape);
  float* out = t.f32();
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (int64_t i = 0; i < t.numel(); ++i) {  // little-endian on any host
    if (e.dtype == "F32") {
      const uint32_t u = p[4 * i] | p[4 * i + 1] << 8 | p[4 * i + 2] << 16 | static_cast<uint32_t>(p[4 * i + 3]) << 24;
      std::memcpy(&out[i], &u, 4);
    } else {
      const uint16_t u = static_cast<uint16_t>(p[2 * i] | p[2 * i + 1] << 8);
      out[i] = e.dtype == "BF16" ? float_from_bf16(u) : float_from_f16(u);
    }
  }
  return t;
}

}  // namespace moe::ckpt
