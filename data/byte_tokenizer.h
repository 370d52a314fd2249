// The byte-level tokenizer: every byte is its own token (0..255) and token 256 ends a document,
// so any text (or binary) file tokenises without a learned vocabulary. Used by moe-tokenize.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/tokenizer.h"

namespace moe {

inline constexpr int32_t kByteEndOfDocument = 256;  // follows each document
inline constexpr int64_t kByteVocabSize = 257;      // 256 byte values + end of document
inline constexpr std::string_view kByteEndOfDocumentText = "<|endofdoc|>";

// Appends one token per byte of `bytes` (value 0..255), without an end-of-document token.
void encode_bytes(std::string_view bytes, std::vector<int32_t>& tokens);

// The bytes the tokens stand for, with each kByteEndOfDocument written as `end_of_document`.
// InvalidArgument naming the position of a token outside [0, 256].
std::string decode_bytes(std::span<const int32_t> tokens,
                         std::string_view end_of_document = kByteEndOfDocumentText);

// The byte tokenizer as a Tokenizer: vocabulary 257, end of document 256, record "byte".
class ByteTokenizer : public Tokenizer {
 public:
  void encode(std::string_view text, std::vector<int32_t>& tokens) const override { encode_bytes(text, tokens); }
  // decode_bytes with the end-of-document token written as kByteEndOfDocumentText.
  std::string decode(std::span<const int32_t> tokens) const override { return decode_bytes(tokens); }
  int64_t vocab_size() const override { return kByteVocabSize; }
  const TokenizerRecord& record() const override { return record_; }

 private:
  TokenizerRecord record_{TokenizerKind::Byte, "byte", 0, kByteEndOfDocument};
};

}  // namespace moe
