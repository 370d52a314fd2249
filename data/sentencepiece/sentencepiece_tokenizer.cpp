// SentencePiece training and encoding (data/sentencepiece/sentencepiece_tokenizer.h).
#include "data/sentencepiece/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <string_view>
#include <unordered_map>

#include "core/check.h"
#include "core/crc32c.h"

namespace moe {
namespace {

// The texts' non-empty lines, one training sentence each.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& texts) : texts_(texts) { advance(); }
  bool done() const override { return text_ >= texts_.size(); }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  // Moves to the next non-empty line, or past the last text.
  void advance() {
    while (text_ < texts_.size()) {
      const std::string& t = texts_[text_];
      if (pos_ >= t.size()) {
        ++text_;
        pos_ = 0;
        continue;
      }
      size_t end = t.find('\n', pos_);
      if (end == std::string::npos) end = t.size();
      line_.assign(t, pos_, end - pos_);
      pos_ = end + 1;
      if (!line_.empty()) return;
    }
  }

  const std::vector<std::string>& texts_;
  size_t text_ = 0, pos_ = 0;
  std::string line_;
};

}  // namespace

void train_sentencepiece(const std::vector<std::string>& texts, const SentencePieceTraining& how) {
  MOE_REQUIRE(how.model_type == "bpe" || how.model_type == "unigram", "--model-type '", how.model_type,
              "' is not a SentencePiece model type this accepts; accepted: bpe, unigram");
  // 3 special pieces + 256 byte pieces leave room for at least one learned piece.
  MOE_REQUIRE(how.vocab_size >= 260 && how.vocab_size <= kTokenFileMaxVocab, "--vocab-size ", how.vocab_size,
              " is outside [260, ", kTokenFileMaxVocab, "]: a model holds 3 special and 256 byte pieces");
  const std::unordered_map<std::string, std::string> args = {
      {"model_prefix", how.model_prefix},
      {"vocab_size", std::to_string(how.vocab_size)},
      {"model_type", how.model_type},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"byte_fallback", "true"},
      {"minloglevel", "2"},  // warnings and errors only; the status carries the error
  };
  LineIterator lines(texts);
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines);
  MOE_REQUIRE(status.ok(), "cannot train a SentencePiece model '", how.model_prefix, ".model': ", status.ToString());
}

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const std::string bytes = read_text_file(model_path, "SentencePiece model");
  const auto status = processor_->LoadFromSerializedProto(bytes);
  MOE_REQUIRE(status.ok(), "'", model_path, "' is not a SentencePiece model: ", status.ToString());
  MOE_REQUIRE(processor_->eos_id() >= 0, "SentencePiece model '", model_path,
              "' has no end-of-sentence piece (eos_id), which moe-tokenize puts after each document");
  record_ = TokenizerRecord{TokenizerKind::SentencePiece, model_path, crc32c(bytes.data(), bytes.size()),
                            processor_->eos_id()};
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

void SentencePieceTokenizer::encode(std::string_view text, std::vector<int32_t>& tokens) const {
  std::vector<int> ids;
  const auto status = processor_->Encode(text, &ids);
  MOE_REQUIRE(status.ok(), "SentencePiece model '", record_.name, "' cannot encode the text: ", status.ToString());
  tokens.insert(tokens.end(), ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::decode(std::span<const int32_t> tokens) const {
  const int64_t vocab = vocab_size();
  for (size_t i = 0; i < tokens.size(); ++i)
    MOE_REQUIRE(tokens[i] >= 0 && tokens[i] < vocab, "SentencePiece model '", record_.name, "': token ", tokens[i],
                " at position ", i, " is outside its vocabulary [0, ", vocab, ")");
  std::string text;
  const auto status = processor_->Decode(std::vector<int>(tokens.begin(), tokens.end()), &text);
  MOE_REQUIRE(status.ok(), "SentencePiece model '", record_.name, "' cannot decode: ", status.ToString());
  return text;
}

int64_t SentencePieceTokenizer::vocab_size() const { return processor_->GetPieceSize(); }

}  // namespace moe
