// Tests of SentencePiece in moe-tokenize (data/sentencepiece/sentencepiece_tokenizer.h): a model
// trained here on text written here round-trips it exactly; bad settings and files are named. A
// binary of its own: SentencePiece cannot share a process with libprotobuf (CMakeLists.txt).
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/crc32c.h"
#include "data/sentencepiece/sentencepiece_tokenizer.h"
#include "tests/test_util.h"

namespace {

using moe::test::error_message;

// ---------------------------------------------------------------------------------------------
// SentencePiece

// A few hundred lines of varied text (words, digits, accents, tabs, repeated spaces): enough for a
// vocabulary of 400 pieces, small enough to train in well under a second.
std::string sample_text() {
  std::string text;
  const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "héllo", "wörld", "naïve",
                         "café", "mixture", "of", "experts", "router", "token"};
  for (int line = 0; line < 200; ++line) {
    for (int w = 0; w < 9; ++w) {
      text += words[(line * 7 + w * w * 3) % 17];
      text += (w == 4 && line % 5 == 0) ? "\t" : (w == 6 && line % 7 == 0) ? "  " : " ";
    }
    text += std::to_string(line * 37) + ".\n";
  }
  return text + "\n  indented line with trailing spaces   \n";
}

class SentencePieceTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { tmp_ = std::make_unique<moe::test::TempDir>("moe_test_sentencepiece"); }
  std::unique_ptr<moe::test::TempDir> tmp_;
};

TEST_P(SentencePieceTest, TrainEncodeDecodeRoundTrip) {
  const std::string text = sample_text();
  const std::string prefix = tmp_->file("sp model");  // a space in the path, to be sure it is one argument
  moe::train_sentencepiece({text, "a second document\n"}, {prefix, 400, GetParam()});
  moe::SentencePieceTokenizer sp(prefix + ".model");
  EXPECT_EQ(sp.vocab_size(), 400);

  const moe::TokenizerRecord& r = sp.record();
  EXPECT_EQ(r.kind, moe::TokenizerKind::SentencePiece);
  EXPECT_EQ(r.name, prefix + ".model");
  const std::string model = moe::read_text_file(prefix + ".model", "model");
  EXPECT_EQ(r.fingerprint, moe::crc32c(model.data(), model.size()));
  EXPECT_EQ(r.end_of_document, 2);  // SentencePiece's </s>

  std::vector<int32_t> tokens;
  moe::encode_document(sp, text, tokens);
  ASSERT_FALSE(tokens.empty());
  EXPECT_EQ(tokens.back(), 2);
  tokens.pop_back();
  // Subwords, not characters: the learned pieces cover the text in far fewer tokens than bytes.
  EXPECT_LT(tokens.size(), text.size() / 2);
  for (int32_t t : tokens) ASSERT_TRUE(t >= 0 && t < 400) << t;
  // Exact: tabs, repeated and trailing spaces, newlines and accents survive (identity
  // normalization, byte fallback).
  EXPECT_EQ(sp.decode(tokens), text);
  const std::string unseen = "zebra ☃ 12\n";  // characters never seen in training: byte fallback
  tokens.clear();
  sp.encode(unseen, tokens);
  EXPECT_EQ(sp.decode(tokens), unseen);

  EXPECT_CONTAINS(error_message([&] { sp.decode(std::vector<int32_t>{5, 400}); }),
                  "token 400 at position 1 is outside its vocabulary [0, 400)");
}

INSTANTIATE_TEST_SUITE_P(ModelTypes, SentencePieceTest, ::testing::Values("bpe", "unigram"));

TEST_F(SentencePieceTest, TrainingRefusesBadSettings) {
  const std::string prefix = tmp_->file("m");
  EXPECT_CONTAINS(error_message([&] { moe::train_sentencepiece({"text"}, {prefix, 300, "word"}); }),
                  "--model-type 'word'", "accepted: bpe, unigram");
  EXPECT_CONTAINS(error_message([&] { moe::train_sentencepiece({"text"}, {prefix, 259, "bpe"}); }),
                  "--vocab-size 259 is outside [260, ");
  // More pieces than the text holds: SentencePiece's own message, passed on.
  EXPECT_CONTAINS(error_message([&] { moe::train_sentencepiece({"a tiny text\n"}, {prefix, 5000, "unigram"}); }),
                  "cannot train a SentencePiece model", "Vocabulary size");
}

TEST_F(SentencePieceTest, LoadingNamesABadModelFile) {
  const std::string bad = tmp_->file("not_a.model");
  std::ofstream(bad) << "this is not a protobuf";
  EXPECT_CONTAINS(error_message([&] { moe::SentencePieceTokenizer sp(bad); }), "'" + bad + "' is not a SentencePiece model");
  EXPECT_CONTAINS(error_message([&] { moe::SentencePieceTokenizer sp(tmp_->file("missing.model")); }),
                  "cannot read SentencePiece model", "No such file");
}

}  // namespace
