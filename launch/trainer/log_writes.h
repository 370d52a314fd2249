// The outcome of the writes of a run directory's log files (metrics.jsonl, tensorboard/, config.yaml,
// run_id, routing_report.txt, DONE), which rank 0 alone writes.
#pragma once

#include <string>

namespace moe {

// A failed log write never stops training: the first failure is printed once to stderr (the file and
// the OS error), every later log write is skipped (a log with a gap or a torn line followed by more
// lines would mislead), DONE is not written and moe-train exits with status 4 at the end
// (docs/run-directory.md). Not thread-safe.
class LogWrites {
 public:
  bool ok() const { return failure_.empty(); }
  const std::string& failure() const { return failure_; }  // "writing 'path' failed: <OS error>"
  // Records that writing `path` failed with errno value `error`; prints only the first failure.
  void fail(const std::string& path, int error);

  // Writes `text` to `path` atomically (path.tmp, fsync, rename) unless a write already failed; on
  // failure records it and leaves no temporary file. True when written.
  bool write_file(const std::string& path, const std::string& text);

 private:
  std::string failure_;
};

}  // namespace moe
