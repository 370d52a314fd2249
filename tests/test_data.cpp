// Tests of the data pipeline: the token file format (round trips and every kind of damage), the
// byte tokenizer, the sequence sources, the train/eval split and the data-parallel loader.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/crc32c.h"
#include "data/blended_source.h"
#include "data/byte_tokenizer.h"
#include "data/data_loader.h"
#include "data/documents.h"
#include "data/synthetic_corpus.h"
#include "data/token_file.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using moe::Status;

namespace {

using moe::test::contains_all;
using moe::test::error_message;

// A fixture with a fresh temporary directory per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override { tmp_ = std::make_unique<moe::test::TempDir>("moe_test_data"); }
  std::string path(const std::string& name) const { return tmp_->file(name); }

  std::unique_ptr<moe::test::TempDir> tmp_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// The tokenizer record the token file tests write: its name is 7 bytes, so the record is 20 + 7
// bytes padded to 32, and the tokens start at byte 64.
const moe::TokenizerRecord kRecord{moe::TokenizerKind::SentencePiece, "t.model", 0x01020304, -1};
constexpr size_t kTokensAt = 64;

// Tokens 0, vocab - 1 and a spread in between, so every byte of the width is exercised.
std::vector<int32_t> sample_tokens(int64_t vocab, int64_t n) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 7919 + i * i) % vocab);
  t[0] = 0;
  t[n - 1] = static_cast<int32_t>(vocab - 1);
  return t;
}

// The failure's status code and that its message names the file and contains every `parts`; the
// throwing reader gives the same message.
void expect_read_fails(const std::string& path, Status::Code code, std::vector<std::string> parts) {
  moe::TokenFile f;
  f.vocab_size = -7;  // must stay untouched on failure
  const Status s = moe::read_token_file(path, &f);
  ASSERT_FALSE(s.ok()) << path;
  EXPECT_EQ(s.code(), code) << s.message();
  EXPECT_CONTAINS(s.message(), path);
  EXPECT_TRUE(contains_all(s.message(), parts));
  EXPECT_EQ(f.vocab_size, -7);
  EXPECT_EQ(error_message([&] { moe::load_token_file(path); }), s.message()) << "load_token_file";
}

// ---------------------------------------------------------------------------------------------
// Token file

using TokenFileTest = TempDirTest;

TEST_F(TokenFileTest, WidthIsTheSmallestHoldingVocabMinusOne) {
  EXPECT_EQ(moe::token_width_for_vocab(1), 1u);
  EXPECT_EQ(moe::token_width_for_vocab(256), 1u);
  EXPECT_EQ(moe::token_width_for_vocab(257), 2u);
  EXPECT_EQ(moe::token_width_for_vocab(65536), 2u);
  EXPECT_EQ(moe::token_width_for_vocab(65537), 4u);
  EXPECT_EQ(moe::token_width_for_vocab(moe::kTokenFileMaxVocab), 4u);
  EXPECT_THROW(moe::token_width_for_vocab(0), moe::InvalidArgument);
  EXPECT_THROW(moe::token_width_for_vocab(moe::kTokenFileMaxVocab + 1), moe::InvalidArgument);
}

TEST_F(TokenFileTest, RoundTripForEachWidth) {
  struct Case {
    int64_t vocab;
    uint32_t width;
  };
  for (Case c : {Case{2, 1}, Case{256, 1}, Case{257, 2}, Case{65536, 2}, Case{65537, 4}, Case{1 << 30, 4}}) {
    SCOPED_TRACE("vocab " + std::to_string(c.vocab));
    const std::string p = path("v" + std::to_string(c.vocab) + ".tok");
    std::vector<int32_t> tokens = sample_tokens(c.vocab, 1000);
    moe::write_token_file(p, tokens, c.vocab, kRecord);
    EXPECT_EQ(fs::file_size(p), kTokensAt + 1000u * c.width);
    EXPECT_FALSE(fs::exists(p + ".tmp"));
    moe::TokenFile f = moe::load_token_file(p);
    EXPECT_EQ(f.tokens, tokens);
    EXPECT_EQ(f.vocab_size, c.vocab);
    EXPECT_EQ(f.token_width, c.width);
    EXPECT_EQ(f.version, 2u);
    EXPECT_EQ(f.tokenizer, kRecord);
  }
}

// The bytes on disk are exactly what docs/token-file-format.md says, independent of the reader.
TEST_F(TokenFileTest, HeaderAndTokensAreLittleEndianAsDocumented) {
  const std::string p = path("a.tok");
  moe::write_token_file(p, std::vector<int32_t>{1, 0x1234, 256}, 70000, kRecord);
  std::vector<uint8_t> expected = {
      'M', 'O', 'E', 'T', 'O', 'K', 'E', 'N',  // magic
      2, 0, 0, 0,                              // version
      4, 0, 0, 0,                              // width
      3, 0, 0, 0, 0, 0, 0, 0,                  // count
      0x70, 0x11, 0x01, 0,                     // vocab 70000 = 0x11170
      32, 0, 0, 0,                             // record_bytes
      1, 0, 0, 0,                              // kind sentencepiece
      4, 3, 2, 1,                              // fingerprint
      0xFF, 0xFF, 0xFF, 0xFF,                  // no end-of-document token
      7, 0, 0, 0,                              // name_bytes
      't', '.', 'm', 'o', 'd', 'e', 'l',       // name
      0, 0, 0, 0,                              // record_crc, below
      0, 0, 0, 0, 0,                           // padding to 32
      1, 0, 0, 0, 0x34, 0x12, 0, 0, 0, 1, 0, 0};
  put_u32(expected, 32 + 23, moe::crc32c(expected.data() + 32, 23));
  EXPECT_EQ(read_bytes(p), expected);
}

TEST_F(TokenFileTest, EmptyTokenListRoundTrips) {
  const std::string p = path("empty.tok");
  moe::write_token_file(p, std::vector<int32_t>{}, 10, kRecord);
  EXPECT_EQ(fs::file_size(p), kTokensAt);
  moe::TokenFile f = moe::load_token_file(p);
  EXPECT_TRUE(f.tokens.empty());
  EXPECT_EQ(f.vocab_size, 10);
}

TEST_F(TokenFileTest, WriterReplacesAnExistingFileAndLeavesNoTemp) {
  const std::string p = path("out.tok");
  write_bytes(p, {'o', 'l', 'd'});
  moe::write_token_file(p, std::vector<int32_t>{5, 6, 7}, 300, kRecord);
  EXPECT_EQ(moe::load_token_file(p).tokens, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  // A stale temp file from an earlier crash is overwritten, then renamed away.
  write_bytes(p + ".tmp", {'x'});
  moe::write_token_file(p, std::vector<int32_t>{1}, 2, kRecord);
  EXPECT_EQ(moe::load_token_file(p).tokens, (std::vector<int32_t>{1}));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_->path()), fs::directory_iterator{}), 1);
}

TEST_F(TokenFileTest, WriterRejectsBadInputWithoutTouchingTheFile) {
  const std::string p = path("keep.tok");
  moe::write_token_file(p, std::vector<int32_t>{1, 2}, 3, kRecord);
  const std::vector<uint8_t> before = read_bytes(p);
  std::string e = error_message([&] { moe::write_token_file(p, std::vector<int32_t>{0, 1, 3}, 3, kRecord); });
  EXPECT_CONTAINS(e, p);
  EXPECT_CONTAINS(e, "token 3 at position 2");
  e = error_message([&] { moe::write_token_file(p, std::vector<int32_t>{-1}, 3, kRecord); });
  EXPECT_CONTAINS(e, "token -1 at position 0");
  e = error_message([&] { moe::write_token_file(p, std::vector<int32_t>{}, 0, kRecord); });
  EXPECT_CONTAINS(e, "vocab_size = 0");
  moe::TokenizerRecord bad = kRecord;
  bad.end_of_document = 3;
  e = error_message([&] { moe::write_token_file(p, std::vector<int32_t>{1}, 3, bad); });
  EXPECT_CONTAINS(e, "end-of-document token 3 is outside [0, vocab_size = 3)");
  bad = kRecord;
  bad.name = std::string(moe::kTokenizerNameMaxBytes + 1, 'n');
  e = error_message([&] { moe::write_token_file(p, std::vector<int32_t>{1}, 3, bad); });
  EXPECT_CONTAINS(e, "the tokenizer's name is 4097 bytes long");
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}

TEST_F(TokenFileTest, WriterNamesAnUnwritablePath) {
  const std::string p = path("no_such_dir/out.tok");
  std::string e = error_message([&] { moe::write_token_file(p, std::vector<int32_t>{1}, 2, kRecord); });
  EXPECT_CONTAINS(e, "cannot write token file '" + p + "'");
  EXPECT_CONTAINS(e, "No such file or directory");
}

// Each test below damages a valid file in one way; the reader must name the file and the damage.
class TokenFileCorruption : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    good_ = path("good.tok");
    moe::write_token_file(good_, std::vector<int32_t>{10, 20, 30, 40, 50}, 300, kRecord);  // width 2: 74 bytes
    bytes_ = read_bytes(good_);
    ASSERT_EQ(bytes_.size(), 74u);
    bad_ = path("bad.tok");
  }
  // The good file's record with the 32-bit field at record byte `at` set to v and its CRC made to
  // match, so that the reader checks the field itself.
  void set_record_field(size_t at, uint32_t v) {
    put_u32(bytes_, 32 + at, v);
    put_u32(bytes_, 32 + 23, moe::crc32c(bytes_.data() + 32, 23));
  }
  // The good file with the 32-bit header field at byte `at` set to v must be refused with `code`
  // and a message holding every one of `parts`.
  void expect_field_refused(size_t at, uint32_t v, Status::Code code, std::vector<std::string> parts) {
    put_u32(bytes_, at, v);
    write_bytes(bad_, bytes_);
    expect_read_fails(bad_, code, std::move(parts));
  }
  std::string good_, bad_;
  std::vector<uint8_t> bytes_;
};

TEST_F(TokenFileCorruption, GoodFileReads) {
  moe::TokenFile f;
  ASSERT_TRUE(moe::read_token_file(good_, &f).ok());
  EXPECT_EQ(f.tokens, (std::vector<int32_t>{10, 20, 30, 40, 50}));
}

TEST_F(TokenFileCorruption, MissingFile) {
  expect_read_fails(path("missing.tok"), Status::Code::IOError, {"cannot open", "No such file"});
}

TEST_F(TokenFileCorruption, Directory) {
  expect_read_fails(tmp_->path(), Status::Code::IOError, {"not a regular file"});
}

TEST_F(TokenFileCorruption, ShorterThanAHeader) {
  write_bytes(bad_, std::vector<uint8_t>(bytes_.begin(), bytes_.begin() + 10));
  expect_read_fails(bad_, Status::Code::Corruption, {"too short for a header", "10 bytes", "32"});
  write_bytes(bad_, {});
  expect_read_fails(bad_, Status::Code::Corruption, {"too short for a header", "0 bytes"});
}

TEST_F(TokenFileCorruption, BadMagic) {
  bytes_[0] = 'X';
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"not a token file"});
}

TEST_F(TokenFileCorruption, NewerVersionNamesBothVersions) {
  expect_field_refused(8, 3, Status::Code::NotSupported, {"format version 3", "versions up to 2"});
}

TEST_F(TokenFileCorruption, VersionZero) {
  expect_field_refused(8, 0, Status::Code::NotSupported, {"format version 0"});
}

TEST_F(TokenFileCorruption, BadWidth) {
  expect_field_refused(12, 3, Status::Code::Corruption, {"token width 3", "accepted: 1, 2 or 4"});
}

TEST_F(TokenFileCorruption, BadVocab) {
  expect_field_refused(24, 0, Status::Code::Corruption, {"vocab_size 0"});
}

// A version-1 file (written by hand: the version-1 writer is gone) still reads, as the byte tokenizer's.
TEST_F(TokenFileCorruption, Version1StillReads) {
  std::vector<uint8_t> v1 = {'M', 'O', 'E', 'T', 'O', 'K', 'E', 'N', 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
                             0x01, 0x01, 0, 0, 0, 0, 0, 0, 'h', 0, 'i', 0, 0x00, 0x01};  // vocab 257: h i <eod>
  write_bytes(bad_, v1);
  moe::TokenFile f = moe::load_token_file(bad_);
  EXPECT_EQ(f.version, 1u);
  EXPECT_EQ(f.tokens, (std::vector<int32_t>{'h', 'i', 256}));
  EXPECT_EQ(f.tokenizer, (moe::TokenizerRecord{moe::TokenizerKind::Byte, "byte", 0, 256}));
  put_u32(v1, 28, 7);
  write_bytes(bad_, v1);
  expect_read_fails(bad_, Status::Code::Corruption, {"reserved header field 7", "version 1 requires 0"});
}

TEST_F(TokenFileCorruption, RecordLengthOutOfRange) {
  for (uint32_t bad : {0u, 16u, 36u, 8200u})
    expect_field_refused(28, bad, Status::Code::Corruption,
                         {"tokenizer record of " + std::to_string(bad) + " bytes", "a multiple of 8 from 24 to 8192"});
  // A record longer than the file.
  bytes_ = read_bytes(good_);
  write_bytes(bad_, std::vector<uint8_t>(bytes_.begin(), bytes_.begin() + 40));
  expect_read_fails(bad_, Status::Code::Corruption, {"too short for its tokenizer record", "40 bytes", "64"});
}

TEST_F(TokenFileCorruption, RecordDamageIsCaughtByItsCrc) {
  bytes_[32 + 16] ^= 1;  // a bit of the name
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"damaged tokenizer record", "its CRC32C is"});
}

TEST_F(TokenFileCorruption, RecordFieldsAreChecked) {
  set_record_field(12, 1000);
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"damaged tokenizer record", "name of 1000 bytes does not fit"});
  bytes_ = read_bytes(good_);
  set_record_field(0, 9);
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"tokenizer kind 9", "accepted: 0 (byte), 1 (sentencepiece)"});
  bytes_ = read_bytes(good_);
  set_record_field(8, 300);
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"end-of-document token 300 is >= vocab_size 300"});
  bytes_ = read_bytes(good_);
  bytes_[63] = 1;
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"its padding is not zero"});
}

TEST_F(TokenFileCorruption, TruncatedSaysExpectedAndFoundBytes) {
  bytes_.pop_back();
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption,
                    {"is truncated", "5 tokens of 2 bytes", "74 bytes expected", "73 bytes found"});
}

TEST_F(TokenFileCorruption, HugeCountIsTruncationNotOverflow) {
  for (int i = 16; i < 24; ++i) bytes_[i] = 0xFF;
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"is truncated", "more than 2^64", "74 bytes found"});
}

TEST_F(TokenFileCorruption, TrailingBytes) {
  bytes_.push_back(0);
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"trailing bytes", "74 bytes expected", "75 bytes found"});
}

TEST_F(TokenFileCorruption, TokenOutOfRangeNamesItsPosition) {
  // Token 3 sits at bytes 64 + 3 * 2; 300 = vocab_size.
  bytes_[70] = 300 & 0xFF;
  bytes_[71] = 300 >> 8;
  write_bytes(bad_, bytes_);
  expect_read_fails(bad_, Status::Code::Corruption, {"token 300 at position 3", ">= vocab_size 300"});
}

// ---------------------------------------------------------------------------------------------
// Byte tokenizer

TEST(ByteTokenizer, EveryByteRoundTrips) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::vector<int32_t> tokens;
  moe::encode_bytes(all, tokens);
  ASSERT_EQ(tokens.size(), 256u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(tokens[b], b);
  EXPECT_EQ(moe::decode_bytes(tokens), all);
}

TEST(ByteTokenizer, DocumentsEndWithTheEndOfDocumentToken) {
  std::vector<int32_t> tokens;
  const moe::ByteTokenizer bytes;
  moe::encode_document(bytes, "ab", tokens);
  moe::encode_document(bytes, "", tokens);
  moe::encode_document(bytes, "\xff", tokens);
  EXPECT_EQ(tokens, (std::vector<int32_t>{'a', 'b', 256, 256, 255, 256}));
  EXPECT_EQ(moe::decode_bytes(tokens, "|"), "ab||\xff|");
  EXPECT_EQ(moe::decode_bytes(tokens), "ab<|endofdoc|><|endofdoc|>\xff<|endofdoc|>");
  EXPECT_EQ(moe::kByteVocabSize, 257);
}

TEST(ByteTokenizer, DecodeRejectsNonByteTokens) {
  std::string e = error_message([] { moe::decode_bytes(std::vector<int32_t>{65, 66, 300}); });
  EXPECT_CONTAINS(e, "token 300 at position 2");
  e = error_message([] { moe::decode_bytes(std::vector<int32_t>{-1}); });
  EXPECT_CONTAINS(e, "token -1 at position 0");
}

// ---------------------------------------------------------------------------------------------
// Sources and the split

using TokenFileSourceTest = TempDirTest;

TEST_F(TokenFileSourceTest, NonOverlappingWindowsAndTheTailDropped) {
  const std::string p = path("c.tok");
  std::vector<int32_t> tokens(23);
  for (int i = 0; i < 23; ++i) tokens[i] = i;
  moe::write_token_file(p, tokens, 100, kRecord);
  moe::TokenFileSource src(p, 4);  // windows of 5: 4 full windows, 3 tokens of tail dropped
  EXPECT_EQ(src.num_sequences(), 4);
  EXPECT_EQ(src.seq_tokens(), 5);
  EXPECT_EQ(src.vocab_size(), 100);
  EXPECT_EQ(src.num_tokens(), 23);
  EXPECT_EQ(src.domain_of(2), -1);
  std::vector<int32_t> seq(5);
  for (int64_t i = 0; i < 4; ++i) {
    src.sequence(i, seq.data());
    for (int t = 0; t < 5; ++t) EXPECT_EQ(seq[t], i * 5 + t);
  }
}

TEST_F(TokenFileSourceTest, FewerTokensThanOneWindow) {
  const std::string p = path("short.tok");
  moe::write_token_file(p, std::vector<int32_t>{1, 2, 3}, 10, kRecord);
  std::string e = error_message([&] { moe::TokenFileSource src(p, 3); });
  EXPECT_CONTAINS(e, p);
  EXPECT_CONTAINS(e, "has 3 tokens");
  EXPECT_CONTAINS(e, "= 4 tokens");
  moe::TokenFileSource ok(p, 2);  // exactly one window
  EXPECT_EQ(ok.num_sequences(), 1);
  // A damaged file surfaces the reader's message.
  e = error_message([&] { moe::TokenFileSource src(path("missing.tok"), 3); });
  EXPECT_CONTAINS(e, "missing.tok");
}

// A bad token is found when the window holding it is read (open touches only the header), and the
// message names the file and the token's position in it.
TEST_F(TokenFileSourceTest, ChecksTokensAsTheyAreRead) {
  const std::string p = path("bad.tok");
  moe::write_token_file(p, std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}, 300, kRecord);
  std::vector<uint8_t> bytes = read_bytes(p);
  bytes[kTokensAt + 6 * 2 + 1] = 0x01;  // token 6 becomes 7 + 256 = 263, then vocab_size drops to 200 below
  put_u32(bytes, 24, 200);
  write_bytes(p, bytes);
  moe::TokenFileSource src(p, 3);  // windows [0, 4) and [4, 8)
  std::vector<int32_t> seq(4);
  src.sequence(0, seq.data());
  EXPECT_EQ(seq, (std::vector<int32_t>{1, 2, 3, 4}));
  const std::string e = error_message<moe::DataReadError>([&] { src.sequence(1, seq.data()); });
  EXPECT_CONTAINS(e, p);
  EXPECT_CONTAINS(e, "token 263 at position 6 is >= vocab_size 200");
}

// Memory stays flat on a token file several times larger than the process may map at all: a child
// process limits its address space (RLIMIT_AS, as `ulimit -v` does) to what it uses now plus 256 MiB,
// opens a sparse 4 GiB file (2^31 tokens of 2 bytes, holes read as token 0) and reads sequences spread
// over all of it. Mapping the whole file must fail under that limit (so the limit binds); the reads
// must succeed, find the tokens planted at both ends, and grow the resident set by less than 32 MiB.
TEST_F(TokenFileSourceTest, MemoryStaysFlatOnAFileLargerThanTheAddressSpaceLimit) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot be set";
#else
  const std::string p = path("huge.tok");
  const int64_t count = int64_t{1} << 31, seq_len = 1023, window = seq_len + 1;
  const uint64_t tokens_at = kTokensAt;
  {
    moe::write_token_file(p, std::vector<int32_t>{}, 1000, kRecord);  // width 2; count and size set below
    std::vector<uint8_t> bytes = read_bytes(p);
    for (int i = 0; i < 8; ++i) bytes[16 + i] = static_cast<uint8_t>(static_cast<uint64_t>(count) >> (8 * i));
    bytes.resize(tokens_at + 2, 0);
    bytes[tokens_at] = 7;  // token 0 = 7
    write_bytes(p, bytes);
    fs::resize_file(p, tokens_at + static_cast<uint64_t>(count) * 2);
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(tokens_at + (count - 1) * 2));
    f.put(9).put(0);  // the last token = 9
  }
  ASSERT_EQ(fs::file_size(p), tokens_at + static_cast<uint64_t>(count) * 2);

  auto vm_kib = [](const char* field) {  // a /proc/self/status figure, in KiB
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(field, 0) == 0) return std::stoll(line.substr(std::string(field).size()));
    return -1LL;
  };
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Exit codes: 0 passed; 2 the limit cannot be set; 3 the whole file could be mapped; 4 wrong tokens;
    // 5 the resident set grew too much; 6 an exception.
    try {
      const rlim_t limit = static_cast<rlim_t>(vm_kib("VmSize:")) * 1024 + (rlim_t{256} << 20);
      const struct rlimit r{limit, limit};
      if (::setrlimit(RLIMIT_AS, &r) != 0) ::_exit(2);
      if (static_cast<uint64_t>(count) * 2 < 4 * (uint64_t{256} << 20)) ::_exit(3);
      const int fd = ::open(p.c_str(), O_RDONLY);
      void* whole = ::mmap(nullptr, static_cast<size_t>(count) * 2 + tokens_at, PROT_READ, MAP_PRIVATE, fd, 0);
      if (whole != MAP_FAILED) ::_exit(3);
      ::close(fd);
      moe::TokenFileSource src(p, seq_len);
      if (src.num_sequences() != count / window) ::_exit(4);
      std::vector<int32_t> seq(window);
      const long long rss_before = vm_kib("VmRSS:");
      for (int64_t i = 0; i < 4000; ++i) {
        const int64_t index = (i * 1000003) % src.num_sequences();
        src.sequence(index, seq.data());
        if (seq[0] != (index == 0 ? 7 : 0) || seq[window - 1] != 0) ::_exit(4);
      }
      src.sequence(src.num_sequences() - 1, seq.data());  // 2^31 = 2^21 windows: the last ends at the file's end
      if (seq[window - 1] != 9) ::_exit(4);
      if (vm_kib("VmRSS:") - rss_before > 32 * 1024) ::_exit(5);
      ::_exit(0);
    } catch (...) {
      ::_exit(6);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died with signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the exit codes in the child's comment";
#endif
}

// ---------------------------------------------------------------------------------------------
// Documents

TEST(Documents, PositionsRestartAfterEachEndTokenAndAtEachSequence) {
  const int32_t E = 9;
  const std::vector<int32_t> inputs = {1, 2, E, 3, E, E, 4, 5,   // sequence 0
                                       6, E, 7, 8, 1, 2, 3, 4};  // sequence 1: starts inside a document
  std::vector<int32_t> positions(16, -7);
  moe::document_positions(inputs.data(), 2, 8, E, positions.data());
  EXPECT_EQ(positions, (std::vector<int32_t>{0, 1, 2, 0, 1, 0, 0, 1,  // an end token ends its own document
                                             0, 1, 0, 1, 2, 3, 4, 5}));
}

TEST(Documents, EndTokenIsTheRecordedOneForAutoOrAnExplicitToken) {
  moe::DataConfig cfg;
  const moe::TokenizerRecord byte = moe::version1_tokenizer_record(257);
  const moe::TokenizerRecord sp{moe::TokenizerKind::SentencePiece, "sp.model", 0x1234, 2};
  EXPECT_EQ(moe::resolve_document_end_token(cfg, byte, 257, "'a.tok'"), 256);
  EXPECT_EQ(moe::resolve_document_end_token(cfg, sp, 32000, "'a.tok'"), 2);
  const moe::TokenizerRecord none = moe::version1_tokenizer_record(200);
  EXPECT_EQ(error_message([&] { moe::resolve_document_end_token(cfg, none, 200, "'a.tok'"); }),
            "data.document_end_token = auto takes the end-of-document token the file records, but 'a.tok' "
            "(tokenizer byte, vocab_size 200) records none; set data.document_end_token to the token that ends a "
            "document in this vocabulary");
  cfg.document_end_token = 7;
  EXPECT_EQ(moe::resolve_document_end_token(cfg, sp, 32000, "'a.tok'"), 7);
  cfg.document_end_token = 300;
  EXPECT_EQ(error_message([&] { moe::resolve_document_end_token(cfg, byte, 257, "'a.tok'"); }),
            "data.document_end_token = 300 is not a token of 'a.tok', whose vocab_size is 257; accepted: 0 to 256, "
            "or auto");
}

TEST(SyntheticSource, MatchesTheCorpus) {
  moe::DataConfig cfg;
  cfg.synthetic_sequences = 40;
  moe::SyntheticSource src(cfg, 64, 16, 1234);
  moe::SyntheticCorpus corpus(cfg, 64, 1234);
  EXPECT_EQ(src.num_sequences(), 40);
  EXPECT_EQ(src.seq_tokens(), 17);
  EXPECT_EQ(src.vocab_size(), 64);
  std::vector<int32_t> a(17), b(17);
  for (int64_t i : {0, 7, 39}) {
    src.sequence(i, a.data());
    corpus.sequence(i, 17, b.data());
    EXPECT_EQ(a, b);
    EXPECT_EQ(src.domain_of(i), corpus.domain_of(i));
  }
  EXPECT_THROW(moe::SyntheticSource(cfg, 64, 0, 1234), moe::InvalidArgument);
  cfg.synthetic_sequences = 0;
  EXPECT_CONTAINS(error_message([&] { moe::SyntheticSource(cfg, 64, 16, 1234); }),
                  "synthetic_sequences = 0 is out of range; accepted: >= 1");
}

TEST(SyntheticCorpus, RefusesACorpusThatDoesNotFitTheVocabulary) {
  // The corpus runs DataConfig::validate_synthetic whatever data.source says.
  struct Case {
    int64_t vocab_size, domains, branching;
    const char* message;  // "" = accepted
  };
  const Case cases[] = {
      {16, 10, 3, "synthetic_domains = 10 needs model.vocab_size >= 2 * 10 = 20, but model.vocab_size = 16"},
      {64, 8, 9, "synthetic_branching = 9 must be <= model.vocab_size / synthetic_domains = 64 / 8 = 8"},
      {64, 8, 0, "synthetic_branching = 0 is out of range; accepted: >= 1"},
      {64, 8, 8, ""},  // every token of a band a successor: the most that fits
  };
  for (const Case& c : cases) {
    moe::DataConfig cfg;
    cfg.source = moe::DataSource::Tokens;
    cfg.synthetic_domains = c.domains;
    cfg.synthetic_branching = c.branching;
    if (*c.message == '\0')
      EXPECT_NO_THROW(moe::SyntheticCorpus(cfg, c.vocab_size, 1));
    else
      EXPECT_EQ(error_message([&] { moe::SyntheticCorpus(cfg, c.vocab_size, 1); }), c.message);
  }
}

TEST(Split, EvalIsTheLastCeilFractionAndDisjoint) {
  struct Case {
    int64_t n;
    double f;
    int64_t eval;
  };
  for (Case c : {Case{10, 0.0, 0}, Case{10, 0.1, 1}, Case{10, 0.3, 3}, Case{10, 0.25, 3}, Case{1000, 0.001, 1},
                 Case{1000, 1e-9, 1}, Case{7, 0.5, 4}, Case{2, 0.5, 1}}) {
    SCOPED_TRACE(std::to_string(c.n) + " x " + std::to_string(c.f));
    moe::DataSplit s = moe::make_split(c.n, c.f);
    EXPECT_EQ(s.eval.size(), c.eval);
    EXPECT_EQ(s.train.begin, 0);
    EXPECT_EQ(s.train.end, s.eval.begin);  // disjoint, contiguous
    EXPECT_EQ(s.eval.end, c.n);            // together they cover [0, n)
  }
  std::string e = error_message([] { moe::make_split(1, 0.5); });
  EXPECT_CONTAINS(e, "leaves none for training");
  EXPECT_CONTAINS(e, "1 sequences");
  EXPECT_CONTAINS(error_message([] { moe::make_split(10, 1.0); }), "must be in [0, 1)");
  EXPECT_CONTAINS(error_message([] { moe::make_split(10, -0.1); }), "must be in [0, 1)");
}

TEST(Split, RankShardsAreDisjointAndCover) {
  for (int W : {1, 2, 3, 4, 7}) {
    int64_t next = 5;
    for (int r = 0; r < W; ++r) {
      moe::IndexRange s = moe::rank_shard({5, 15}, r, W);
      EXPECT_EQ(s.begin, next);
      EXPECT_GE(s.size(), 10 / W);
      EXPECT_LE(s.size(), 10 / W + 1);
      next = s.end;
    }
    EXPECT_EQ(next, 15);
  }
  EXPECT_THROW(moe::rank_shard({0, 4}, 2, 2), moe::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// The loader

// Sequence i is (i, i + 1, ..., i + seq_len): the first input token names the sequence.
class IndexSource : public moe::SequenceSource {
 public:
  IndexSource(int64_t n, int64_t seq_len) : n_(n), seq_len_(seq_len) {}
  int64_t num_sequences() const override { return n_; }
  int64_t seq_tokens() const override { return seq_len_ + 1; }
  void sequence(int64_t index, int32_t* out) const override {
    for (int64_t t = 0; t <= seq_len_; ++t) out[t] = static_cast<int32_t>(index + t);
  }
  int64_t vocab_size() const override { return n_ + seq_len_ + 1; }
  int64_t domain_of(int64_t index) const override { return index % 3; }

 private:
  int64_t n_, seq_len_;
};

// The sequence indices of one batch, checking inputs, targets and domains along the way.
std::vector<int64_t> draw(moe::DataLoader& loader) {
  const int64_t B = loader.batch_size(), L = loader.seq_len();
  std::vector<int32_t> in(B * L, -1), tgt(B * L, -1);
  std::vector<int64_t> dom(B, -9), idx(B);
  loader.next_batch(in.data(), tgt.data(), dom.data());
  for (int64_t b = 0; b < B; ++b) {
    idx[b] = in[b * L];
    for (int64_t t = 0; t < L; ++t) {
      EXPECT_EQ(in[b * L + t], idx[b] + t);
      EXPECT_EQ(tgt[b * L + t], idx[b] + t + 1);
    }
    EXPECT_EQ(dom[b], idx[b] % 3);
  }
  return idx;
}

// One global step: the concatenation of every rank's batch in rank order.
std::vector<int64_t> draw_global(std::vector<moe::DataLoader>& ranks) {
  std::vector<int64_t> all;
  for (moe::DataLoader& l : ranks) {
    std::vector<int64_t> part = draw(l);
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

std::vector<moe::DataLoader> make_ranks(const moe::SequenceSource& src, int64_t begin, int64_t end, int W,
                                        int64_t B, uint64_t seed) {
  std::vector<moe::DataLoader> ranks;
  for (int r = 0; r < W; ++r) ranks.emplace_back(src, begin, end, r, W, B, seed);
  return ranks;
}

TEST(DataLoader, EverySequenceOncePerEpochAcrossRanks) {
  IndexSource src(60, 4);
  const int64_t begin = 6, end = 54;  // 48 training sequences, divisible by every W * B below
  for (int W : {1, 2, 4}) {
    SCOPED_TRACE("W = " + std::to_string(W));
    const int64_t B = 3;
    std::vector<moe::DataLoader> ranks = make_ranks(src, begin, end, W, B, 11);
    const int64_t steps = 48 / (W * B);
    EXPECT_EQ(ranks[0].steps_per_epoch(), steps);
    for (uint64_t epoch = 0; epoch < 3; ++epoch) {
      std::multiset<int64_t> seen;
      for (int64_t s = 0; s < steps; ++s) {
        EXPECT_EQ(ranks[0].position(), (moe::LoaderPosition{epoch, static_cast<uint64_t>(s)}));
        std::set<int64_t> in_step;
        for (moe::DataLoader& l : ranks) {
          for (int64_t i : draw(l)) {
            EXPECT_TRUE(in_step.insert(i).second) << "sequence " << i << " twice in one global step";
            seen.insert(i);
          }
        }
      }
      ASSERT_EQ(seen.size(), 48u);
      for (int64_t i = begin; i < end; ++i) EXPECT_EQ(seen.count(i), 1u) << "sequence " << i << ", epoch " << epoch;
    }
  }
}

TEST(DataLoader, RemainderIsDroppedAndEpochsStillNeverRepeat) {
  IndexSource src(50, 2);
  std::vector<moe::DataLoader> ranks = make_ranks(src, 0, 50, 2, 4, 3);  // 50 = 6 steps x 8 + 2 dropped
  EXPECT_EQ(ranks[0].steps_per_epoch(), 6);
  std::set<int64_t> dropped_union;
  for (int epoch = 0; epoch < 4; ++epoch) {
    std::set<int64_t> seen;
    for (int s = 0; s < 6; ++s)
      for (int64_t i : draw_global(ranks)) EXPECT_TRUE(seen.insert(i).second);
    EXPECT_EQ(seen.size(), 48u);
    for (int64_t i = 0; i < 50; ++i)
      if (!seen.count(i)) dropped_union.insert(i);
  }
  EXPECT_GT(dropped_union.size(), 2u) << "the same sequences were dropped in every epoch";
}

TEST(DataLoader, GlobalOrderDoesNotDependOnTheNumberOfRanks) {
  IndexSource src(100, 3);
  std::vector<moe::DataLoader> w1 = make_ranks(src, 10, 90, 1, 8, 5);
  std::vector<moe::DataLoader> w2 = make_ranks(src, 10, 90, 2, 4, 5);
  std::vector<moe::DataLoader> w4 = make_ranks(src, 10, 90, 4, 2, 5);
  for (int s = 0; s < 25; ++s) {  // 10 steps per epoch: crosses two epoch boundaries
    std::vector<int64_t> a = draw_global(w1);
    EXPECT_EQ(draw_global(w2), a) << "step " << s;
    EXPECT_EQ(draw_global(w4), a) << "step " << s;
  }
}

TEST(DataLoader, OrderDependsOnSeedAndEpoch) {
  IndexSource src(64, 2);
  auto epoch_order = [&](uint64_t seed, int epoch) {
    moe::DataLoader l(src, 0, 64, 0, 1, 64, seed);
    std::vector<int64_t> order;
    for (int e = 0; e <= epoch; ++e) order = draw(l);
    return order;
  };
  std::vector<int64_t> identity(64);
  for (int i = 0; i < 64; ++i) identity[i] = i;
  const std::vector<int64_t> s1e0 = epoch_order(1, 0);
  EXPECT_NE(s1e0, identity);
  EXPECT_NE(epoch_order(1, 1), s1e0);
  EXPECT_NE(epoch_order(2, 0), s1e0);
  EXPECT_EQ(epoch_order(1, 0), s1e0);
}

TEST(DataLoader, SameArgumentsGiveTheSameBatchesBitForBit) {
  moe::DataConfig cfg;
  cfg.synthetic_sequences = 200;
  moe::SyntheticSource src(cfg, 64, 16, 1234);
  moe::DataLoader a(src, 0, 180, 1, 2, 4, 77), b(src, 0, 180, 1, 2, 4, 77);
  std::vector<int32_t> ia(64), ta(64), ib(64), tb(64), seq(17);
  std::vector<int64_t> da(4), db(4);
  for (int s = 0; s < 30; ++s) {
    a.next_batch(ia.data(), ta.data(), da.data());
    b.next_batch(ib.data(), tb.data(), db.data());
    ASSERT_EQ(ia, ib);
    ASSERT_EQ(ta, tb);
    ASSERT_EQ(da, db);
  }
  // Targets are the inputs shifted by one; domains may be left out.
  a.next_batch(ia.data(), ta.data(), nullptr);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t t = 0; t + 1 < 16; ++t) EXPECT_EQ(ta[r * 16 + t], ia[r * 16 + t + 1]);
}

TEST(DataLoader, RestoredLoaderContinuesExactly) {
  IndexSource src(40, 3);
  for (int k : {0, 3, 9, 12}) {  // 9 steps per epoch: positions inside and at an epoch's start
    SCOPED_TRACE("k = " + std::to_string(k));
    moe::DataLoader first(src, 0, 36, 1, 2, 2, 9);
    for (int s = 0; s < k; ++s) draw(first);
    const moe::LoaderPosition saved = first.position();
    EXPECT_EQ(saved, (moe::LoaderPosition{static_cast<uint64_t>(k / 9), static_cast<uint64_t>(k % 9)}));
    std::vector<std::vector<int64_t>> expected;
    for (int s = 0; s < 20; ++s) expected.push_back(draw(first));
    moe::DataLoader fresh(src, 0, 36, 1, 2, 2, 9);
    draw(fresh);  // a restored loader forgets where it was
    fresh.restore(saved);
    EXPECT_EQ(fresh.position(), saved);
    for (int s = 0; s < 20; ++s) EXPECT_EQ(draw(fresh), expected[s]) << "batch " << s << " after restore";
  }
}

TEST(DataLoader, RestoreRejectsAStepBeyondTheEpoch) {
  IndexSource src(40, 3);
  moe::DataLoader l(src, 0, 40, 0, 2, 5, 1);  // 4 steps per epoch
  std::string e = error_message([&] { l.restore({2, 4}); });
  EXPECT_CONTAINS(e, "step 4 of epoch 2");
  EXPECT_CONTAINS(e, "has 4 steps");
  l.restore({2, 3});
  EXPECT_EQ(l.position(), (moe::LoaderPosition{2, 3}));
}

TEST(DataLoader, TooSmallSplitNamesBothNumbers) {
  IndexSource src(40, 3);
  std::string e = error_message([&] { moe::DataLoader l(src, 30, 35, 0, 2, 3, 1); });
  EXPECT_CONTAINS(e, "has 5 sequences");
  EXPECT_CONTAINS(e, "2 x 3 = 6");
  moe::DataLoader exactly(src, 30, 36, 1, 2, 3, 1);  // one step per epoch
  EXPECT_EQ(exactly.steps_per_epoch(), 1);
}

TEST(DataLoader, RejectsBadArguments) {
  IndexSource src(40, 3);
  EXPECT_CONTAINS(error_message([&] { moe::DataLoader l(src, 0, 41, 0, 1, 1, 1); }), "range [0, 41)");
  EXPECT_CONTAINS(error_message([&] { moe::DataLoader l(src, 5, 5, 0, 1, 1, 1); }), "non-empty");
  EXPECT_CONTAINS(error_message([&] { moe::DataLoader l(src, 0, 40, 2, 2, 1, 1); }), "rank = 2");
  EXPECT_CONTAINS(error_message([&] { moe::DataLoader l(src, 0, 40, 0, 0, 1, 1); }), "world_size = 0");
  EXPECT_CONTAINS(error_message([&] { moe::DataLoader l(src, 0, 40, 0, 1, 0, 1); }), "batch_size = 0");
  IndexSource one_token(10, 0);
  EXPECT_CONTAINS(error_message([&] { moe::DataLoader l(one_token, 0, 10, 0, 1, 1, 1); }), "at least 2");
}

// ---------------------------------------------------------------------------------------------
// Blends (data.train_files)

TEST(TrainFiles, ParsesPathsAndWeights) {
  EXPECT_EQ(moe::parse_train_files("a.tok:0.7,dir/b:c.tok:3"),
            (std::vector<moe::WeightedFile>{{"a.tok", 0.7}, {"dir/b:c.tok", 3.0}}));  // the weight after the last ':'
  const std::string format = "; accepted: PATH:WEIGHT entries separated by commas";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "train_files = '': is empty"},
      {"a.tok", "train_files = 'a.tok': entry 'a.tok' has no ':WEIGHT'"},
      {":1", "entry ':1' has an empty path"},
      {"a.tok:x", "entry 'a.tok:x' has weight 'x', not a number"},
      {"a.tok:", "entry 'a.tok:' has weight '', not a number"},
      {"a.tok:0", "entry 'a.tok:0' has weight 0, not a finite number > 0"},
      {"a.tok:-1", "has weight -1, not a finite number > 0"},
      {"a.tok:inf", "has weight inf, not a finite number > 0"},
      {"a.tok:1,", "has an empty entry"},
  };
  for (const auto& [text, message] : bad) {
    SCOPED_TRACE(text);
    const std::string e = error_message([&] { moe::parse_train_files(text); });
    EXPECT_CONTAINS(e, message);
    EXPECT_CONTAINS(e, format);
  }
}

// Sequences [tag, index, index + 1, ...]: which source and sequence a draw read.
class TaggedSource : public moe::SequenceSource {
 public:
  TaggedSource(int64_t n, int32_t tag, int64_t vocab = 1000) : n_(n), tag_(tag), vocab_(vocab) {}
  int64_t num_sequences() const override { return n_; }
  int64_t seq_tokens() const override { return 3; }
  void sequence(int64_t index, int32_t* out) const override {
    out[0] = tag_;
    out[1] = static_cast<int32_t>(index);
    out[2] = static_cast<int32_t>(index + 1);
  }
  int64_t vocab_size() const override { return vocab_; }
  int64_t domain_of(int64_t) const override { return -1; }

 private:
  int64_t n_;
  int32_t tag_;
  int64_t vocab_;
};

std::unique_ptr<moe::BlendedSource> blend(std::vector<int64_t> sizes, std::vector<double> weights, uint64_t seed,
                                          std::vector<int64_t> vocabs = {}) {
  std::vector<std::unique_ptr<moe::SequenceSource>> sources;
  std::vector<std::string> names;
  for (size_t f = 0; f < sizes.size(); ++f) {
    sources.push_back(std::make_unique<TaggedSource>(sizes[f], static_cast<int32_t>(f), vocabs.empty() ? 1000 : vocabs[f]));
    names.push_back("'f" + std::to_string(f) + ".tok'");
  }
  return std::make_unique<moe::BlendedSource>(std::move(sources), weights, names, seed);
}

// M = 10 + 30 = 40 draws per epoch: 0.7 M = 28 of the 10-sequence file (repeated: every sequence in
// each pass of 10 draws) and 12 of the 30-sequence file (walked through over 2.5 epochs: its first 30
// draws, epochs 0 to 2, read every sequence once). Weights are relative.
TEST(BlendedSource, DrawsFollowTheWeightsAndWalkThroughEveryFile) {
  const auto src = blend({10, 30}, {7, 3}, 5);
  ASSERT_EQ(src->num_sequences(), 40);
  EXPECT_EQ(src->draws_of(0), 28);
  EXPECT_EQ(src->draws_of(1), 12);
  std::vector<int32_t> seq(3);
  std::vector<int> small_count(10, 0), large_count(30, 0);
  for (uint64_t epoch = 0; epoch < 3; ++epoch) {
    int from_small = 0;
    for (int64_t i = 0; i < 40; ++i) {
      src->sequence_in_epoch(i, epoch, seq.data());
      ASSERT_TRUE(seq[0] == 0 || seq[0] == 1);
      if (seq[0] == 0) {
        ++from_small;
        if (epoch == 0) ++small_count[seq[1]];
      } else if (epoch < 2 || i - 28 < 6) {  // file 1's draws g = 12 epoch + (i - 28) < 30
        ++large_count[seq[1]];
      }
    }
    EXPECT_EQ(from_small, 28) << "epoch " << epoch;
  }
  for (int c : small_count) EXPECT_TRUE(c == 2 || c == 3) << "28 draws over 10 sequences: 2 passes and 8";
  EXPECT_EQ(std::count(small_count.begin(), small_count.end(), 3), 8);
  for (int c : large_count) EXPECT_EQ(c, 1) << "one pass over the 30 sequences";
  // Epochs differ for the downsampled file (a later part of its pass), and sequence() is epoch 0.
  src->sequence(30, seq.data());
  const int32_t epoch0 = seq[1];
  src->sequence_in_epoch(30, 1, seq.data());
  EXPECT_NE(seq[1], epoch0);
}

TEST(BlendedSource, DeterministicInTheSeedAndEpoch) {
  const auto a = blend({50, 70}, {1, 1}, 11), b = blend({50, 70}, {1, 1}, 11), c = blend({50, 70}, {1, 1}, 12);
  std::vector<int32_t> sa(3), sb(3), sc(3);
  int differ = 0;
  for (uint64_t epoch = 0; epoch < 3; ++epoch)
    for (int64_t i = 0; i < a->num_sequences(); ++i) {
      a->sequence_in_epoch(i, epoch, sa.data());
      b->sequence_in_epoch(i, epoch, sb.data());
      c->sequence_in_epoch(i, epoch, sc.data());
      ASSERT_EQ(sa, sb);
      differ += sa != sc;
    }
  EXPECT_GT(differ, 300) << "another seed should reorder the passes";
}

TEST(BlendedSource, RefusesMismatchedVocabulariesAndWeightsThatGiveAFileNoDraw) {
  EXPECT_EQ(error_message([] { blend({10, 10}, {1, 1}, 1, {257, 32000}); }),
            "blended files must share one vocabulary: 'f1.tok' has vocab_size 32000 but 'f0.tok' has 257");
  EXPECT_EQ(error_message([] { blend({10, 10}, {1000, 1}, 1); }),
            "'f1.tok' gets no draw: its weight 1 of 1001 times the blend's 20 sequences rounds to 0; raise its weight");
  EXPECT_CONTAINS(error_message([] { blend({10, 10}, {1, -1}, 1); }), "blend weight -1 of 'f1.tok' must be finite and > 0");
}

// The loader reads a blend by epoch: its batches in epoch 1 hold what the blend's indices hold then.
TEST(BlendedSource, TheLoaderReadsEachEpochsDraws) {
  const auto src = blend({6, 9}, {1, 2}, 3);
  moe::DataLoader loader(*src, 0, 15, 0, 1, 15, 3);  // one step per epoch: every index once
  std::vector<int32_t> in(15 * 2), tgt(15 * 2), seq(3);
  loader.next_batch(in.data(), tgt.data(), nullptr);
  loader.next_batch(in.data(), tgt.data(), nullptr);  // epoch 1
  std::multiset<std::pair<int32_t, int32_t>> from_loader, from_blend;
  for (int64_t b = 0; b < 15; ++b) from_loader.insert({in[b * 2], in[b * 2 + 1]});
  for (int64_t i = 0; i < 15; ++i) {
    src->sequence_in_epoch(i, 1, seq.data());
    from_blend.insert({seq[0], seq[1]});
  }
  EXPECT_EQ(from_loader, from_blend);
}

}  // namespace
