// Sealing and unsealing checkpoint metadata files (core/checkpoint/metadata_file.h).
#include "core/checkpoint/metadata_file.h"

#include <cstdio>

#include "core/checkpoint/checkpoint.h"
#include "core/crc32c.h"

namespace moe {

namespace {

std::string sealed(const std::string& payload, uint32_t version) {
  checkpoint::MetadataFile file;
  file.set_format_version(version);
  file.set_message(payload);
  file.set_crc32c(crc32c(payload.data(), payload.size()));
  return file.SerializeAsString();
}

}  // namespace

std::string seal_metadata(const google::protobuf::MessageLite& message, uint32_t version) {
  return sealed(message.SerializeAsString(), version);
}

Status parse_metadata(const std::string& path, const std::string& bytes, const std::string& what, uint32_t* version,
                      google::protobuf::MessageLite* message) {
  const std::string file = "'" + path + "'";
  if (bytes.empty()) return Status::corruption(file + " is empty");
  auto parse_bare = [&](const std::string& b) {
    return message->ParseFromString(b) ? Status::ok_status() : Status::corruption(file + " is not a " + what);
  };
  if (*version == 1) return parse_bare(bytes);
  checkpoint::MetadataFile sealed_file;
  if (!sealed_file.ParseFromString(bytes)) return Status::corruption(file + " is not a " + what);
  const uint32_t found = sealed_file.format_version();
  if (*version == 0) {
    if (found == 0 || found > kCheckpointFormatVersion)
      return Status::not_supported(file + " has format version " + std::to_string(found) +
                                   "; this build reads versions 1 to " + std::to_string(kCheckpointFormatVersion));
    *version = found;
    if (found == 1) return parse_bare(bytes);  // a version-1 manifest: its field 1 is format_version
  } else if (found != *version) {
    return Status::corruption(file + " has format version " + std::to_string(found) + ", the manifest " +
                              std::to_string(*version));
  }
  const std::string& payload = sealed_file.message();
  const uint32_t crc = crc32c(payload.data(), payload.size());
  if (crc != sealed_file.crc32c()) {
    char buf[96];
    std::snprintf(buf, sizeof buf, " is damaged: CRC32C %08x of its message, the file records %08x", crc,
                  sealed_file.crc32c());
    return Status::corruption(file + buf);
  }
  if (sealed(payload, found) != bytes)
    return Status::corruption(file + " holds bytes besides its sealed " + what + " (format version " +
                              std::to_string(found) + ")");
  if (!message->ParseFromString(payload))
    return Status::corruption(file + " has an intact checksum but its message is not a " + what);
  return Status::ok_status();
}

}  // namespace moe
