// A checkpoint's metadata files (MANIFEST, shard_*.index) on disk: from format version 2 on, each is
// a MetadataFile (checkpoint.proto) sealing the serialized message with its CRC32C, so that together
// with the tensor entries' CRCs every byte of a checkpoint is covered by a checksum.
#pragma once

#include <cstdint>
#include <string>

#include <google/protobuf/message_lite.h>

#include "core/status.h"

namespace moe {

// The bytes of a metadata file holding `message` under format version `version` (>= 2).
std::string seal_metadata(const google::protobuf::MessageLite& message, uint32_t version);

// Parses the bytes of metadata file `path` into `message` (`what` names its kind in messages:
// "checkpoint manifest", "shard index").
// *version: in, the checkpoint's format version, or 0 to take it from the file (the MANIFEST, whose
// version decides the checkpoint's); out, the version the file was read as. A version-1 file is the
// bare message, without a checksum; a later version's file must be exactly a MetadataFile of that
// version whose CRC32C matches its message. Corruption, or NotSupported for a version this build does
// not read (1 to kCheckpointFormatVersion), naming `path`.
Status parse_metadata(const std::string& path, const std::string& bytes, const std::string& what, uint32_t* version,
                      google::protobuf::MessageLite* message);

}  // namespace moe
