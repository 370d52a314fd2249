// Writes TensorBoard event files (TFRecord framing of Event protos) with scalar summaries.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace moe {

// File layout (TFRecord): per record, u64 length (little-endian), u32 masked CRC32C of those 8
// bytes, the serialized Event, u32 masked CRC32C of the Event bytes. The first record carries
// file_version "brain.Event:2". Not thread-safe.
class TensorBoardWriter {
 public:
  // Creates dir if needed and opens dir/events.out.tfevents.<seconds>.<host>. Throws
  // InvalidArgument naming the path if it cannot be created.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One event at `step` holding all the (tag, value) scalars.
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& bytes);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace moe
