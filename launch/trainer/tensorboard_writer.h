// Writes TensorBoard event files (TFRecord framing of Event protos) with scalar and text summaries.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "launch/trainer/log_writes.h"

namespace moe {

// File layout (TFRecord): per record, u64 length (little-endian), u32 masked CRC32C of those 8
// bytes, the serialized Event, u32 masked CRC32C of the Event bytes. The first record carries
// file_version "brain.Event:2". Not thread-safe. Every write is checked: a failure is recorded in
// `writes` (which then turns every later write into a no-op), never thrown.
class TensorBoardWriter {
 public:
  // Creates dir if needed and opens a new file dir/events.out.tfevents.<seconds>.<host> (with a
  // suffix .1, .2, ... when that name is taken: an existing file is never overwritten).
  TensorBoardWriter(const std::string& dir, LogWrites& writes);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One event at `step` holding all the (tag, value) scalars.
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars);
  // One event at `step` holding `text` under `tag` for TensorBoard's text plugin (its TEXT tab renders
  // it as Markdown).
  void add_text(int64_t step, const std::string& tag, const std::string& text);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& bytes);
  std::string path_;
  std::FILE* file_ = nullptr;
  LogWrites& writes_;
};

// Cuts every event file in `dir` back to its records of steps <= last_step (the file_version record
// included), and drops a torn or damaged record and all after it: a resumed run's new file then
// continues the old ones without a step twice. Records of a file are in step order (one writer).
// A missing dir is fine; a failure is recorded in `writes`.
void cut_back_event_files(const std::string& dir, int64_t last_step, LogWrites& writes);

}  // namespace moe
