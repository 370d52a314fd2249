// Tests of the subword tokenizers (data/sentencepiece/sentencepiece_tokenizer.h, data/hf_bpe_tokenizer.h): a
// SentencePiece model trained here round-trips text, and the tokenizer.json BPE matches ids worked
// out by hand and refuses what it does not support with a message naming it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/check.h"
#include "core/crc32c.h"
#include "data/hf_bpe_tokenizer.h"
#include "tests/test_util.h"

namespace {

using moe::test::error_message;

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json BPE

// A tiny Mixtral-style tokenizer.json: "▁" (U+2581) for spaces, byte fallback, five merges.
//   ids   0 <unk>  1 <s>  2 </s>  3 <0x0A>  4 <0xC3>  5 <0xA9>  6 ▁  7 a  8 b  9 c
//         10 ▁a  11 ab  12 ▁ab  13 bc  14 abc
//   merges by rank: 0 "a b"  1 "▁ a"  2 "▁a b"  3 "b c"  4 "ab c"
// NORMALIZER and PRE_TOKENIZER are replaced by each test.
std::string tiny_json(const std::string& normalizer =
                          R"({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                              {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})",
                      const std::string& pre_tokenizer = "null", const std::string& model_extra = "") {
  return R"({"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true},
                   {"id": 2, "content": "</s>", "special": true}],
  "normalizer": )" + normalizer + R"(,
  "pre_tokenizer": )" + pre_tokenizer + R"(,
  "post_processor": null, "decoder": null,
  "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, )" + model_extra + R"(
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xC3>": 4, "<0xA9>": 5, "▁": 6, "a": 7, "b": 8,
              "c": 9, "▁a": 10, "ab": 11, "▁ab": 12, "bc": 13, "abc": 14},
    "merges": ["a b", "▁ a", ["▁a", "b"], "b c", "ab c"]}})";
}

std::vector<int32_t> encode(const moe::Tokenizer& t, const std::string& text) {
  std::vector<int32_t> ids;
  t.encode(text, ids);
  return ids;
}

TEST(HfBpeTokenizer, MatchesIdsWorkedOutByHand) {
  const moe::HfBpeTokenizer t(tiny_json(), "tiny.json");
  EXPECT_EQ(t.vocab_size(), 15);
  EXPECT_EQ(t.record().kind, moe::TokenizerKind::HfBpe);
  EXPECT_EQ(t.record().end_of_document, 2);
  const std::string json = tiny_json();
  EXPECT_EQ(t.record().fingerprint, moe::crc32c(json.data(), json.size()));

  // "ab abc\né" normalizes to "▁ab▁abc\né": symbols ▁ a b ▁ a b c, then \n and é (bytes C3 A9) by
  // byte fallback: 6 7 8 6 7 8 9 3 4 5. Lowest rank first: "a b" (rank 0) at both places, before
  // "▁ a" (rank 1) could apply, so ▁ ab ▁ ab c; "▁ ab" is no merge; "ab c" (rank 4) gives abc.
  EXPECT_EQ(encode(t, "ab abc\n\xc3\xa9"), (std::vector<int32_t>{6, 11, 6, 14, 3, 4, 5}));
  // "ac bbc" -> "▁ac▁bbc": "▁ a" (rank 1) makes ▁a; "b c" (rank 3) makes bc; nothing joins b bc.
  EXPECT_EQ(encode(t, "ac bbc"), (std::vector<int32_t>{10, 9, 6, 8, 13}));
  // "abc" alone: "a b" (rank 0) before "b c" (rank 3), then "ab c": ▁ abc.
  EXPECT_EQ(encode(t, "abc"), (std::vector<int32_t>{6, 14}));
  // d and e have no piece and no byte token: unknown, and fuse_unk makes the run one <unk>.
  EXPECT_EQ(encode(t, "dea"), (std::vector<int32_t>{6, 0, 7}));
  EXPECT_TRUE(encode(t, "").empty());

  EXPECT_EQ(t.decode(std::vector<int32_t>{6, 11, 6, 14, 3, 4, 5}), "ab abc\n\xc3\xa9");
  EXPECT_EQ(t.decode(encode(t, "ac bbc")), "ac bbc");
  EXPECT_CONTAINS(error_message([&] { t.decode(std::vector<int32_t>{6, 15}); }), "token 15 at position 1");
}

TEST(HfBpeTokenizer, MetaspacePreTokenizerGivesTheSameIds) {
  for (const char* split : {"true", "false"}) {
    SCOPED_TRACE(split);
    const moe::HfBpeTokenizer t(
        tiny_json("null", std::string(R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": )") +
                              split + "}"),
        "meta.json");
    EXPECT_EQ(encode(t, "ab abc\n\xc3\xa9"), (std::vector<int32_t>{6, 11, 6, 14, 3, 4, 5}));
    EXPECT_EQ(encode(t, "ac bbc"), (std::vector<int32_t>{10, 9, 6, 8, 13}));
    // A text that starts with a space gets no second marker.
    EXPECT_EQ(encode(t, " ab"), (std::vector<int32_t>{6, 11}));
    EXPECT_EQ(t.decode(encode(t, "ac bbc")), "ac bbc");
  }
}

TEST(HfBpeTokenizer, TheEndOfDocumentTokenCanBeNamed) {
  EXPECT_EQ(moe::HfBpeTokenizer(tiny_json(), "t", "<s>").record().end_of_document, 1);
  EXPECT_CONTAINS(error_message([] { moe::HfBpeTokenizer(tiny_json(), "t", "<eot>"); }),
                  "has no token '<eot>' for the end of documents");
  std::string json = tiny_json();
  json.replace(json.find(R"({"id": 2, "content": "</s>", "special": true})"), 45, R"({"id": 2, "content": "<x>"})");
  json.replace(json.find(R"("</s>": 2)"), 9, R"("<x>": 2)");
  EXPECT_CONTAINS(error_message([&] { moe::HfBpeTokenizer(json, "t"); }),
                  "none of the end-of-document tokens looked for", "--eos-token");
}

TEST(HfBpeTokenizer, WithoutByteFallbackOrUnkAnUnknownCharacterIsAnError) {
  std::string json = tiny_json("null", "null", R"("ignore_merges": false,)");
  json.replace(json.find(R"("unk_token": "<unk>")"), 20, R"("unk_token": null)");
  json.replace(json.find(R"("byte_fallback": true)"), 21, R"("byte_fallback": false)");
  const moe::HfBpeTokenizer t(json, "strict.json");
  EXPECT_EQ(encode(t, "ab"), (std::vector<int32_t>{11}));  // no normalizer: no marker
  EXPECT_CONTAINS(error_message([&] { encode(t, "abd"); }), "strict.json", "the character at byte 2",
                  "neither byte fallback nor unk_token");
}

TEST(HfBpeTokenizer, RefusesBadJsonAndUnsupportedFeaturesByName) {
  auto refusal = [](const std::string& json) { return error_message([&] { moe::HfBpeTokenizer(json, "x.json"); }); };
  EXPECT_CONTAINS(refusal("{\"model\": "), "tokenizer.json 'x.json' is not valid JSON", "parse error");
  EXPECT_CONTAINS(refusal("[1, 2]"), "has no \"model\" object");
  EXPECT_CONTAINS(refusal(tiny_json("null", R"({"type": "ByteLevel", "add_prefix_space": false})")),
                  "pre_tokenizer ByteLevel is not supported", "the byte-level BPE of GPT-2 and Llama 3 is not");
  EXPECT_CONTAINS(refusal(tiny_json(R"({"type": "NFKC"})")), "normalizer NFKC is not supported");
  EXPECT_CONTAINS(refusal(tiny_json(R"({"type": "Replace", "pattern": {"Regex": "\\s"}, "content": "▁"})")),
                  "normalizer {\"content\":\"▁\",\"pattern\":{\"Regex\":\"\\\\s\"},\"type\":\"Replace\"} is not supported");
  EXPECT_CONTAINS(refusal(tiny_json(R"({"type": "Prepend", "prepend": "▁"})")),
                  "Prepend without Replace");
  std::string json = tiny_json();
  json.replace(json.find(R"("type": "BPE")"), 13, R"("type": "WordPiece")");
  EXPECT_CONTAINS(refusal(json), "model type 'WordPiece' is not supported");
  json = tiny_json();
  json.replace(json.find(R"("dropout": null)"), 15, R"("dropout": 0.1)");
  EXPECT_CONTAINS(refusal(json), "BPE dropout 0.1 is not supported");
  json = tiny_json();
  json.replace(json.find(R"("b c")"), 5, R"("b z")");
  EXPECT_CONTAINS(refusal(json), "merge 3 ('b', 'z') joins 'z', which is not in the vocabulary");
  json = tiny_json();
  json.replace(json.find(R"("c": 9)"), 6, R"("c": -9)");
  EXPECT_CONTAINS(refusal(json), "the id of 'c' is -9; accepted: an integer in [0, 2^31)");
}

}  // namespace
