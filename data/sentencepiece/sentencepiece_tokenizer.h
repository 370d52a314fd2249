// SentencePiece (libsentencepiece): training a model on text files, and applying one as a Tokenizer.
// Models are trained as Llama's are, so that decode(encode(text)) == text for any UTF-8 text: no
// normalization (identity), whitespace kept as it is, byte fallback for characters outside the
// vocabulary (newlines, tabs, rare characters become byte tokens <0x0A> ...). The one exception is
// U+2581 "▁", SentencePiece's space marker, which decodes as a space.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe {

// How train_sentencepiece trains.
struct SentencePieceTraining {
  std::string model_prefix;   // writes model_prefix.model and model_prefix.vocab
  int64_t vocab_size = 0;     // exactly this many pieces: 3 special (<unk> 0, <s> 1, </s> 2), 256 bytes, the rest learned
  std::string model_type;     // "bpe" or "unigram"
};

// Trains a model on `texts` (each a document; every non-empty line is a training sentence) and writes
// its two files. InvalidArgument naming the setting (model_type not bpe or unigram, vocab_size out of
// [260, 2^31]) or with SentencePiece's own message (e.g. a vocab_size too large for the text, or
// too small for its characters).
void train_sentencepiece(const std::vector<std::string>& texts, const SentencePieceTraining& how);

// A trained SentencePiece model; its end-of-document token is the model's </s> (eos_id).
class SentencePieceTokenizer : public Tokenizer {
 public:
  // Loads `model_path`. InvalidArgument naming the file when it cannot be read, is not a
  // SentencePiece model, or has no end-of-sentence piece.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  void encode(std::string_view text, std::vector<int32_t>& tokens) const override;
  std::string decode(std::span<const int32_t> tokens) const override;
  int64_t vocab_size() const override;
  const TokenizerRecord& record() const override { return record_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  TokenizerRecord record_;
};

}  // namespace moe
