// The token file: a pre-tokenised corpus on disk (a fixed header, then the tokens), its writer
// (atomic: temp file, fsync, rename) and its readers (every kind of damage named with the file): one
// that maps the pages a read needs, for files larger than memory, and one that loads a whole file.
//
// Format, version 1 (also in docs/token-file-format.md). All integers are little-endian.
//
//   offset  size  field        meaning
//   0       8     magic        the ASCII bytes "MOETOKEN"
//   8       4     version      u32, the format's major version: 1
//   12      4     token_width  u32, bytes per token: 1, 2 or 4
//   16      8     token_count  u64, number of tokens that follow
//   24      4     vocab_size   u32, every token is < vocab_size; 1 <= vocab_size <= 2^31
//   28      4     reserved     u32, 0
//   32      token_count * token_width bytes: the tokens, each an unsigned little-endian integer
//
// The file is exactly 32 + token_count * token_width bytes; anything else is corruption.
// Version rule: any change to this layout or its meaning bumps `version`. A reader accepts every
// version up to its own (only 1 exists) and rejects a newer one with a message naming both versions.
// A version-1 reader rejects a non-zero `reserved` field, so a later version may use it.
// The writer picks the smallest width that holds vocab_size - 1; readers accept any of the three
// widths (a wider one than needed is legal).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace moe {

inline constexpr char kTokenFileMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', 'E', 'N'};
inline constexpr uint32_t kTokenFileVersion = 1;  // the newest version this code reads and writes
inline constexpr int64_t kTokenFileHeaderBytes = 32;
inline constexpr int64_t kTokenFileMaxVocab = int64_t{1} << 31;  // tokens are held as int32_t

// A token file loaded into memory.
struct TokenFile {
  std::vector<int32_t> tokens;  // (token_count) every value in [0, vocab_size)
  int64_t vocab_size = 0;
  uint32_t version = 0;
  uint32_t token_width = 0;     // bytes per token on disk
};

// Bytes per token the writer uses for this vocabulary: 1 up to 256, 2 up to 65536, else 4.
// InvalidArgument unless 1 <= vocab_size <= kTokenFileMaxVocab.
uint32_t token_width_for_vocab(int64_t vocab_size);

// Writes `tokens` to `path` in the current format. The data goes to path + ".tmp", which is fsynced
// and then renamed over `path`, so a crash never leaves a partial file under the final name, and an
// existing file at `path` is replaced only when the new one is complete. Throws InvalidArgument
// (naming the path and the reason) when vocab_size is out of range, a token is outside
// [0, vocab_size) (naming its position), or the file cannot be written; the temp file is removed on
// failure. Not safe to call concurrently for the same path.
void write_token_file(const std::string& path, std::span<const int32_t> tokens, int64_t vocab_size);

// A token file opened for reading on demand: open() checks the header and the file's size, never the
// tokens; read() memory-maps (read-only) just the pages that hold the tokens asked for, decodes and
// checks them, and unmaps them again. So a file far larger than memory, or than the process's address
// space limit, reads in memory proportional to one read, and opening it touches only its header.
// (One mapping of the whole file would leave memory flat too, but counts the file's size against
// RLIMIT_AS / `ulimit -v`.) Thread-safe: read() is const and keeps no state between calls. The file
// must not shrink while it is open (a mapping past its end faults).
class TokenFileReader {
 public:
  // Opens `path` and checks everything read_token_file checks except the tokens themselves; *out is
  // left unchanged on failure. Status codes and messages as read_token_file's.
  static Status open(const std::string& path, std::unique_ptr<TokenFileReader>* out);
  ~TokenFileReader();
  TokenFileReader(const TokenFileReader&) = delete;
  TokenFileReader& operator=(const TokenFileReader&) = delete;

  // Writes tokens [first, first + count) to out (count of them), each checked < vocab_size. Requires
  // 0 <= first <= first + count <= size(). Returns Corruption naming the file and the position of the
  // first token >= vocab_size (out is then partly written), or IOError when the pages cannot be mapped.
  Status read(int64_t first, int64_t count, int32_t* out) const;

  int64_t size() const { return count_; }  // tokens in the file
  int64_t vocab_size() const { return vocab_size_; }
  uint32_t version() const { return version_; }
  uint32_t token_width() const { return width_; }
  const std::string& path() const { return path_; }

 private:
  TokenFileReader() = default;

  std::string path_;
  int fd_ = -1;
  int64_t count_ = 0, vocab_size_ = 0;
  uint32_t version_ = 0, width_ = 0;
};

// Reads a whole token file into *out (left unchanged on failure). The status message names the file
// and what is wrong. Returns:
//   IOError       the file cannot be opened or read (missing, a directory, no permission);
//   Corruption    shorter than a header, bad magic ("not a token file"), bad width, vocab_size out
//                 of range, reserved != 0, size not matching token_count (truncated: expected and
//                 found bytes), a token >= vocab_size (its position);
//   NotSupported  a version newer than kTokenFileVersion (naming both), or version 0.
Status read_token_file(const std::string& path, TokenFile* out);

// read_token_file, throwing InvalidArgument with the status message on failure.
TokenFile load_token_file(const std::string& path);

}  // namespace moe
