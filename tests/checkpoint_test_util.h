// Test helpers for checkpoint files: whole-file reads and writes, and a metadata file's message
// (MANIFEST, shard index) read out of its seal and written back sealed with a correct CRC32C, so a
// test can change a field and leave it to the semantic checks, not the checksum, to notice.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/metadata_file.h"

namespace moe::test {

inline std::string read_whole(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void write_whole(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// The message of a metadata file of the current format version; false if it is not one.
inline bool read_metadata_message(const std::string& path, google::protobuf::MessageLite* message) {
  uint32_t version = kCheckpointFormatVersion;
  return parse_metadata(path, read_whole(path), "metadata file", &version, message).ok();
}

inline void write_metadata_message(const std::string& path, const google::protobuf::MessageLite& message,
                                   uint32_t version = kCheckpointFormatVersion) {
  write_whole(path, seal_metadata(message, version));
}

}  // namespace moe::test
