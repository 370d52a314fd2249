// The token file's writer and reader (format: data/token_file.h, docs/token-file-format.md).
#include "data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "core/check.h"
#include "core/crc32c.h"
#include "core/file_io.h"

namespace moe {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;  // tokens are encoded, or read whole, in chunks of this size

void put_le(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// The directory holding `path`, for the fsync that makes a rename durable.
std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

constexpr uint32_t kNoEndOfDocument = 0xFFFFFFFFu;  // on disk: the record's "none"
constexpr size_t kRecordFixedBytes = 20;             // kind, fingerprint, end_of_document, name_bytes, crc

// The tokenizer record as stored (layout in token_file.h), zero-padded to a multiple of 8 bytes.
std::vector<uint8_t> encode_record(const TokenizerRecord& r) {
  const size_t n = r.name.size();
  std::vector<uint8_t> out((kRecordFixedBytes + n + 7) / 8 * 8, 0);
  put_le(out.data(), static_cast<uint32_t>(r.kind), 4);
  put_le(out.data() + 4, r.fingerprint, 4);
  put_le(out.data() + 8, r.end_of_document < 0 ? kNoEndOfDocument : static_cast<uint64_t>(r.end_of_document), 4);
  put_le(out.data() + 12, n, 4);
  std::memcpy(out.data() + 16, r.name.data(), n);
  put_le(out.data() + 16 + n, crc32c(out.data(), 16 + n), 4);
  return out;
}

// Parses the record's `bytes` (record_bytes of them) into *out; Corruption naming what is damaged.
Status decode_record(const std::vector<uint8_t>& bytes, uint64_t vocab, const std::string& name,
                     TokenizerRecord* out) {
  const std::string where = name + " has a damaged tokenizer record: ";
  const uint64_t kind = get_le(bytes.data(), 4);
  const uint64_t name_bytes = get_le(bytes.data() + 12, 4);
  if (name_bytes > bytes.size() - kRecordFixedBytes)
    return Status::corruption(where + "its name of " + std::to_string(name_bytes) + " bytes does not fit in its " +
                              std::to_string(bytes.size()) + " bytes");
  const uint32_t stored_crc = static_cast<uint32_t>(get_le(bytes.data() + 16 + name_bytes, 4));
  const uint32_t actual_crc = crc32c(bytes.data(), 16 + name_bytes);
  if (stored_crc != actual_crc)
    return Status::corruption(where + "its CRC32C is " + std::to_string(actual_crc) + ", but it says " +
                              std::to_string(stored_crc));
  if (std::any_of(bytes.begin() + static_cast<ptrdiff_t>(kRecordFixedBytes + name_bytes), bytes.end(),
                  [](uint8_t b) { return b != 0; }))
    return Status::corruption(where + "its padding is not zero");
  if (kind > static_cast<uint32_t>(TokenizerKind::HfBpe))
    return Status::corruption(where + "tokenizer kind " + std::to_string(kind) +
                              "; accepted: 0 (byte), 1 (sentencepiece), 2 (hf-bpe)");
  const uint64_t eod = get_le(bytes.data() + 8, 4);
  if (eod != kNoEndOfDocument && eod >= vocab)
    return Status::corruption(where + "end-of-document token " + std::to_string(eod) + " is >= vocab_size " +
                              std::to_string(vocab));
  out->kind = static_cast<TokenizerKind>(kind);
  out->fingerprint = static_cast<uint32_t>(get_le(bytes.data() + 4, 4));
  out->end_of_document = eod == kNoEndOfDocument ? -1 : static_cast<int64_t>(eod);
  out->name.assign(reinterpret_cast<const char*>(bytes.data()) + 16, name_bytes);
  return Status::ok_status();
}

}  // namespace

const char* tokenizer_kind_name(TokenizerKind kind) {
  switch (kind) {
    case TokenizerKind::Byte: return "byte";
    case TokenizerKind::SentencePiece: return "sentencepiece";
    case TokenizerKind::HfBpe: return "hf-bpe";
  }
  return "unknown";
}

TokenizerRecord version1_tokenizer_record(int64_t vocab_size) {
  return TokenizerRecord{TokenizerKind::Byte, "byte", 0, vocab_size > 256 ? 256 : -1};
}

std::string fingerprint_text(uint32_t fingerprint) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", fingerprint);
  return text;
}

std::string describe_tokenizer(const TokenizerRecord& record) {
  if (record.kind == TokenizerKind::Byte) return "byte";
  return std::string(tokenizer_kind_name(record.kind)) + " '" + record.name + "' (fingerprint " +
         fingerprint_text(record.fingerprint) + ")";
}

uint32_t token_width_for_vocab(int64_t vocab_size) {
  MOE_REQUIRE(vocab_size >= 1 && vocab_size <= kTokenFileMaxVocab, "token file vocab_size = ", vocab_size,
              " must be in [1, ", kTokenFileMaxVocab, "]");
  if (vocab_size <= 256) return 1;
  if (vocab_size <= 65536) return 2;
  return 4;
}

void write_token_file(const std::string& path, std::span<const int32_t> tokens, int64_t vocab_size,
                      const TokenizerRecord& tokenizer) {
  MOE_REQUIRE(vocab_size >= 1 && vocab_size <= kTokenFileMaxVocab, "cannot write token file '", path,
              "': vocab_size = ", vocab_size, " must be in [1, ", kTokenFileMaxVocab, "]");
  MOE_REQUIRE(tokenizer.end_of_document >= -1 && tokenizer.end_of_document < vocab_size, "cannot write token file '",
              path, "': the end-of-document token ", tokenizer.end_of_document, " is outside [0, vocab_size = ",
              vocab_size, ") and not -1 (none)");
  MOE_REQUIRE(static_cast<int64_t>(tokenizer.name.size()) <= kTokenizerNameMaxBytes, "cannot write token file '",
              path, "': the tokenizer's name is ", tokenizer.name.size(), " bytes long, more than ",
              kTokenizerNameMaxBytes);
  for (size_t i = 0; i < tokens.size(); ++i) {
    MOE_REQUIRE(tokens[i] >= 0 && tokens[i] < vocab_size, "cannot write token file '", path, "': token ",
                tokens[i], " at position ", i, " is outside [0, vocab_size = ", vocab_size, ")");
  }
  const uint32_t width = token_width_for_vocab(vocab_size);
  const std::string tmp = path + ".tmp";

  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOE_REQUIRE(fd >= 0, "cannot write token file '", path, "': cannot create '", tmp, "': ", errno_text());
  // From here on every failure removes the temp file before throwing.
  auto give_up = [&](const std::string& what) {
    std::string reason = errno_text();
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw InvalidArgument("cannot write token file '" + path + "': " + what + ": " + reason);
  };

  uint8_t header[kTokenFileHeaderBytes] = {};
  std::memcpy(header, kTokenFileMagic, 8);
  put_le(header + 8, kTokenFileVersion, 4);
  put_le(header + 12, width, 4);
  put_le(header + 16, tokens.size(), 8);
  put_le(header + 24, static_cast<uint64_t>(vocab_size), 4);
  const std::vector<uint8_t> record = encode_record(tokenizer);
  put_le(header + 28, record.size(), 4);
  if (!write_all(fd, header, sizeof(header)) || !write_all(fd, record.data(), record.size()))
    give_up("writing '" + tmp + "'");

  std::vector<uint8_t> buf(kChunkBytes);
  const size_t per_chunk = kChunkBytes / width;
  for (size_t start = 0; start < tokens.size(); start += per_chunk) {
    const size_t n = std::min(per_chunk, tokens.size() - start);
    for (size_t i = 0; i < n; ++i)
      put_le(buf.data() + i * width, static_cast<uint32_t>(tokens[start + i]), static_cast<int>(width));
    if (!write_all(fd, buf.data(), n * width)) give_up("writing '" + tmp + "'");
  }
  if (::fsync(fd) != 0) give_up("fsync of '" + tmp + "'");
  const int closed = ::close(fd);
  fd = -1;
  if (closed != 0) give_up("closing '" + tmp + "'");
  if (::rename(tmp.c_str(), path.c_str()) != 0) give_up("renaming '" + tmp + "' to it");

  // Make the rename itself durable. Some file systems refuse fsync on a directory; the file's data
  // is already safe then, so a failure here is not an error.
  int dir = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
}

Status TokenFileReader::open(const std::string& path, std::unique_ptr<TokenFileReader>* out) {
  const std::string name = "token file '" + path + "'";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::io_error("cannot open " + name + ": " + errno_text());
  std::unique_ptr<TokenFileReader> reader(new TokenFileReader());
  reader->fd_ = fd;  // closed by the reader's destructor on every path
  reader->path_ = path;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::io_error("cannot stat " + name + ": " + errno_text());
  if (!S_ISREG(st.st_mode)) return Status::io_error("cannot read " + name + ": it is not a regular file");
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);

  uint8_t header[kTokenFileHeaderBytes];
  if (file_bytes < static_cast<uint64_t>(kTokenFileHeaderBytes)) {
    return Status::corruption(name + " is too short for a header: " + std::to_string(file_bytes) +
                                  " bytes, a header needs " + std::to_string(kTokenFileHeaderBytes));
  }
  if (read_all(fd, header, sizeof(header)) != sizeof(header))
    return Status::io_error("cannot read the header of " + name + ": " + errno_text());

  if (std::memcmp(header, kTokenFileMagic, 8) != 0)
    return Status::corruption("'" + path + "' is not a token file: it does not start with \"MOETOKEN\"");
  const uint32_t version = static_cast<uint32_t>(get_le(header + 8, 4));
  const uint32_t width = static_cast<uint32_t>(get_le(header + 12, 4));
  const uint64_t count = get_le(header + 16, 8);
  const uint64_t vocab = get_le(header + 24, 4);
  const uint32_t record_bytes = static_cast<uint32_t>(get_le(header + 28, 4));
  if (version > kTokenFileVersion) {
    return Status::not_supported(name + " has format version " + std::to_string(version) +
                                     ", but this reader supports versions up to " +
                                     std::to_string(kTokenFileVersion) + "; it needs a newer build");
  }
  if (version == 0) {
    return Status::not_supported(name + " has format version 0, which does not exist (supported: 1 to " +
                                     std::to_string(kTokenFileVersion) + ")");
  }
  if (width != 1 && width != 2 && width != 4) {
    return Status::corruption(name + " has token width " + std::to_string(width) +
                                  " bytes; accepted: 1, 2 or 4");
  }
  if (vocab < 1 || vocab > static_cast<uint64_t>(kTokenFileMaxVocab)) {
    return Status::corruption(name + " has vocab_size " + std::to_string(vocab) + "; accepted: 1 to " +
                                  std::to_string(kTokenFileMaxVocab));
  }
  TokenizerRecord& tokenizer = reader->tokenizer_;
  if (version == 1) {
    if (record_bytes != 0) {
      return Status::corruption(name + " has reserved header field " + std::to_string(record_bytes) +
                                    "; version 1 requires 0");
    }
    tokenizer = version1_tokenizer_record(static_cast<int64_t>(vocab));
  } else {
    if (record_bytes < 24 || record_bytes > kTokenizerRecordMaxBytes || record_bytes % 8 != 0) {
      return Status::corruption(name + " has a tokenizer record of " + std::to_string(record_bytes) +
                                    " bytes; accepted: a multiple of 8 from 24 to " +
                                    std::to_string(kTokenizerRecordMaxBytes));
    }
    if (file_bytes < static_cast<uint64_t>(kTokenFileHeaderBytes) + record_bytes) {
      return Status::corruption(name + " is too short for its tokenizer record: " + std::to_string(file_bytes) +
                                    " bytes, the header and the record need " +
                                    std::to_string(kTokenFileHeaderBytes + record_bytes));
    }
    std::vector<uint8_t> record(record_bytes);
    if (read_all(fd, record.data(), record.size()) != record.size())
      return Status::io_error("cannot read the tokenizer record of " + name + ": " + errno_text());
    Status s = decode_record(record, vocab, name, &tokenizer);
    if (!s.ok()) return s;
  }
  // Compare sizes without overflowing on a corrupt count: count <= data_bytes / width implies
  // count * width <= data_bytes.
  const uint64_t tokens_offset = kTokenFileHeaderBytes + record_bytes;  // record_bytes is 0 in version 1
  const uint64_t data_bytes = file_bytes - tokens_offset;
  const bool truncated = count > data_bytes / width;
  if (truncated || count * width != data_bytes) {
    const std::string expected = count > (UINT64_MAX - tokens_offset) / width
                                     ? std::string("more than 2^64")
                                     : std::to_string(tokens_offset + count * width);
    return Status::corruption(name + (truncated ? " is truncated" : " has trailing bytes") +
                                  ": the header says " + std::to_string(count) + " tokens of " +
                                  std::to_string(width) + " bytes, so " + expected +
                                  " bytes expected, but " + std::to_string(file_bytes) + " bytes found");
  }
  reader->count_ = static_cast<int64_t>(count);
  reader->tokens_offset_ = tokens_offset;
  reader->vocab_size_ = static_cast<int64_t>(vocab);
  reader->version_ = version;
  reader->width_ = width;
  *out = std::move(reader);
  return Status::ok_status();
}

TokenFileReader::~TokenFileReader() {
  if (fd_ >= 0) ::close(fd_);
}

Status TokenFileReader::read(int64_t first, int64_t count, int32_t* out) const {
  MOE_ASSERT(first >= 0 && count >= 0 && first <= count_ - count, "token file read outside the file");
  if (count == 0) return Status::ok_status();
  // The mapping starts at the page holding the first token's first byte (mmap offsets are page-aligned).
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = tokens_offset_ + static_cast<uint64_t>(first) * width_;
  const uint64_t map_begin = begin / page * page;
  const size_t map_bytes = static_cast<size_t>(begin + static_cast<uint64_t>(count) * width_ - map_begin);
  void* map = ::mmap(nullptr, map_bytes, PROT_READ, MAP_PRIVATE, fd_, static_cast<off_t>(map_begin));
  if (map == MAP_FAILED) {
    return Status::io_error("cannot map the tokens of token file '" + path_ + "' (at token " +
                            std::to_string(first) + "): " + errno_text());
  }
  const uint8_t* bytes = static_cast<const uint8_t*>(map) + (begin - map_begin);
  Status result = Status::ok_status();
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t t = get_le(bytes + i * width_, static_cast<int>(width_));
    if (t >= static_cast<uint64_t>(vocab_size_)) {
      result = Status::corruption("token file '" + path_ + "': token " + std::to_string(t) + " at position " +
                                  std::to_string(first + i) + " is >= vocab_size " + std::to_string(vocab_size_));
      break;
    }
    out[i] = static_cast<int32_t>(t);
  }
  ::munmap(map, map_bytes);
  return result;
}

Status read_token_file(const std::string& path, TokenFile* out) {
  std::unique_ptr<TokenFileReader> reader;
  Status s = TokenFileReader::open(path, &reader);
  if (!s.ok()) return s;
  TokenFile result;
  result.vocab_size = reader->vocab_size();
  result.version = reader->version();
  result.token_width = reader->token_width();
  result.tokenizer = reader->tokenizer();
  result.tokens.resize(static_cast<size_t>(reader->size()));
  const int64_t per_chunk = static_cast<int64_t>(kChunkBytes / reader->token_width());
  for (int64_t start = 0; start < reader->size(); start += per_chunk) {
    s = reader->read(start, std::min(per_chunk, reader->size() - start), result.tokens.data() + start);
    if (!s.ok()) return s;
  }
  *out = std::move(result);
  return Status::ok_status();
}

TokenFile load_token_file(const std::string& path) {
  TokenFile file;
  const Status s = read_token_file(path, &file);
  if (!s.ok()) throw InvalidArgument(s.message());
  return file;
}

}  // namespace moe
