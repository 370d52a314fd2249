// The token file: a pre-tokenised corpus on disk (a fixed header, then the tokens), its writer
// (atomic: temp file, fsync, rename) and its readers (every kind of damage named with the file): one
// that maps the pages a read needs, for files larger than memory, and one that loads a whole file.
//
// Format, version 2 (also in docs/token-file-format.md). All integers are little-endian.
//
//   offset  size  field         meaning
//   0       8     magic         the ASCII bytes "MOETOKEN"
//   8       4     version       u32, the format's major version: 2 (1 is still read)
//   12      4     token_width   u32, bytes per token: 1, 2 or 4
//   16      8     token_count   u64, number of tokens that follow
//   24      4     vocab_size    u32, every token is < vocab_size; 1 <= vocab_size <= 2^31
//   28      4     record_bytes  u32, length R of the tokenizer record (version 1: "reserved", 0)
//   32      R     the tokenizer record (version 2 only), R a multiple of 8 in [24, 8192]:
//           +0   4  kind             u32: 0 byte, 1 sentencepiece, 2 hf-bpe
//           +4   4  fingerprint      u32: CRC32C of the tokenizer's model file (0 for byte)
//           +8   4  end_of_document  u32: the token that ends each document; 0xFFFFFFFF: none
//           +12  4  name_bytes       u32: N <= 4096
//           +16  N  name             the model file as given to moe-tokenize ("byte" for byte)
//           +16+N 4 record_crc       u32: CRC32C of the record's bytes [0, 16 + N)
//           then zero bytes up to R
//   32 + R  token_count * token_width bytes: the tokens, each an unsigned little-endian integer
//
// The file is exactly 32 + R + token_count * token_width bytes; anything else is corruption.
// Version rule: any change to this layout or its meaning bumps `version`. A reader accepts every
// version up to its own and rejects a newer one with a message naming both versions. A version-1
// file has no record (its reserved field must be 0) and was made by the byte tokenizer.
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
inline constexpr uint32_t kTokenFileVersion = 2;  // the newest version this code reads and writes
inline constexpr int64_t kTokenFileHeaderBytes = 32;
inline constexpr int64_t kTokenFileMaxVocab = int64_t{1} << 31;  // tokens are held as int32_t
inline constexpr int64_t kTokenizerNameMaxBytes = 4096;
inline constexpr int64_t kTokenizerRecordMaxBytes = 8192;

// The tokenizer that made a token file.
enum class TokenizerKind : uint32_t { Byte = 0, SentencePiece = 1, HfBpe = 2 };

// "byte", "sentencepiece" or "hf-bpe".
const char* tokenizer_kind_name(TokenizerKind kind);

// A token file's tokenizer record: which tokenizer made it, and its end-of-document token.
struct TokenizerRecord {
  TokenizerKind kind = TokenizerKind::Byte;
  std::string name;              // the model file as given to moe-tokenize; "byte" for the byte tokenizer
  uint32_t fingerprint = 0;      // CRC32C of the model file's bytes (tokenizer_file_fingerprint); 0 for byte
  int64_t end_of_document = -1;  // the token after each document; -1: none
  bool operator==(const TokenizerRecord&) const = default;
};

// What a version-1 file implies: the byte tokenizer ("byte", fingerprint 0), end of document 256
// when the vocabulary holds it, else none.
TokenizerRecord version1_tokenizer_record(int64_t vocab_size);

// A fingerprint as messages write it: "0x1a2b3c4d".
std::string fingerprint_text(uint32_t fingerprint);

// "sentencepiece 'm.model' (fingerprint 0x1a2b3c4d)", "byte", for messages.
std::string describe_tokenizer(const TokenizerRecord& record);

// A token file loaded into memory.
struct TokenFile {
  std::vector<int32_t> tokens;  // (token_count) every value in [0, vocab_size)
  int64_t vocab_size = 0;
  uint32_t version = 0;
  uint32_t token_width = 0;     // bytes per token on disk
  TokenizerRecord tokenizer;    // version 1: version1_tokenizer_record(vocab_size)
};

// Bytes per token the writer uses for this vocabulary: 1 up to 256, 2 up to 65536, else 4.
// InvalidArgument unless 1 <= vocab_size <= kTokenFileMaxVocab.
uint32_t token_width_for_vocab(int64_t vocab_size);

// Writes `tokens` to `path` in the current format, with `tokenizer` as its tokenizer record. The data goes to path + ".tmp", which is fsynced
// and then renamed over `path`, so a crash never leaves a partial file under the final name, and an
// existing file at `path` is replaced only when the new one is complete. Throws InvalidArgument
// (naming the path and the reason) when vocab_size is out of range, a token is outside
// [0, vocab_size) (naming its position), the record's end of document is neither -1 nor below
// vocab_size, its name is longer than kTokenizerNameMaxBytes, or the file cannot be written; the
// temp file is removed on failure. Not safe to call concurrently for the same path.
void write_token_file(const std::string& path, std::span<const int32_t> tokens, int64_t vocab_size,
                      const TokenizerRecord& tokenizer);

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
  // The tokenizer that made the file (its record; version 1: the byte tokenizer).
  const TokenizerRecord& tokenizer() const { return tokenizer_; }

 private:
  TokenFileReader() = default;

  std::string path_;
  int fd_ = -1;
  int64_t count_ = 0, vocab_size_ = 0;
  uint64_t tokens_offset_ = 0;  // bytes before the first token: the header and the tokenizer record
  uint32_t version_ = 0, width_ = 0;
  TokenizerRecord tokenizer_;
};

// Reads a whole token file into *out (left unchanged on failure). The status message names the file
// and what is wrong. Returns:
//   IOError       the file cannot be opened or read (missing, a directory, no permission);
//   Corruption    shorter than a header, bad magic ("not a token file"), bad width, vocab_size out
//                 of range, version 1 with reserved != 0, a damaged tokenizer record (its length,
//                 kind, name length, CRC, padding or end-of-document token), size not matching
//                 token_count (truncated: expected and found bytes), a token >= vocab_size (its position);
//   NotSupported  a version newer than kTokenFileVersion (naming both), or version 0.
Status read_token_file(const std::string& path, TokenFile* out);

// read_token_file, throwing InvalidArgument with the status message on failure.
TokenFile load_token_file(const std::string& path);

}  // namespace moe
