// The tokenizer interface moe-tokenize applies (byte, SentencePiece, Hugging Face BPE), and what
// they share: one document's encoding, the model file's fingerprint a token file records.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/token_file.h"

namespace moe {

// Text to tokens and back. Implementations are immutable after construction: every method may be
// called from several threads at once.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Appends the tokens of `text`, one document, without its end-of-document token. InvalidArgument
  // when the text cannot be encoded (naming what is wrong).
  virtual void encode(std::string_view text, std::vector<int32_t>& tokens) const = 0;
  // The text the tokens stand for. InvalidArgument naming the position of a token outside the vocabulary.
  virtual std::string decode(std::span<const int32_t> tokens) const = 0;
  // Every token is in [0, vocab_size()).
  virtual int64_t vocab_size() const = 0;
  // What a token file records of this tokenizer: kind, name, fingerprint, end-of-document token (>= 0).
  virtual const TokenizerRecord& record() const = 0;
};

// Appends one document: tokenizer.encode(text), then the tokenizer's end-of-document token.
void encode_document(const Tokenizer& tokenizer, std::string_view text, std::vector<int32_t>& tokens);

// The whole content of `path`. InvalidArgument "cannot read <what> '<path>': <reason>" when it is
// missing, a directory or unreadable.
std::string read_text_file(const std::string& path, const std::string& what);

// The fingerprint a token file records of a tokenizer's model file: the CRC32C of its bytes.
// InvalidArgument as read_text_file (what = "tokenizer").
uint32_t tokenizer_file_fingerprint(const std::string& path);

}  // namespace moe
