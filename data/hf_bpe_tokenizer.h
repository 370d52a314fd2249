// A Hugging Face tokenizer.json with a BPE model, applied as a Tokenizer: the SentencePiece-style BPE
// of Llama 2, Mistral and Mixtral ("▁" marks spaces, byte fallback), with the BPE merges done here.
//
// Supported (anything else in the file is refused with one message naming it and what is accepted):
//   model          type BPE; vocab; merges as "a b" strings or ["a", "b"] pairs; unk_token (or null);
//                  byte_fallback; fuse_unk; ignore_merges; dropout null (or 0);
//                  continuing_subword_prefix and end_of_word_suffix null (or empty)
//   normalizer     null, or Prepend(M) and Replace(" " -> M), alone or in a Sequence (Mixtral)
//   pre_tokenizer  null, or Metaspace with replacement M, prepend_scheme always/first/never (or the
//                  older add_prefix_space) and split true/false (Llama 2 / Mistral, newer files)
//   added_tokens   count towards the vocabulary and name the end-of-document token; they are not
//                  matched in the text (the text is data: as Hugging Face's split_special_tokens=True)
// Refused: the byte-level BPE of GPT-2 and Llama 3 (pre_tokenizer ByteLevel, Split with a regex),
// every other normalizer (NFC, NFKC, Lowercase, Strip, ...) and pre-tokenizer. One difference from
// Hugging Face: a character outside the vocabulary with neither byte fallback nor unk_token is an
// error here (Hugging Face drops it silently).
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/tokenizer.h"

namespace moe {

class HfBpeTokenizer : public Tokenizer {
 public:
  // The tokenizer of `json` (a tokenizer.json's text), recorded as kind hf-bpe with `name` and the
  // CRC32C of `json` (so of the file it was read from). The end-of-document token is the added token
  // or vocabulary entry `eos_token`; empty: the first of "</s>", "<|endoftext|>", "<|end_of_text|>"
  // there is. InvalidArgument naming `name` and what is wrong: not JSON (with the parser's position),
  // an unsupported feature (as above), a merge of pieces not in the vocabulary, ids outside
  // [0, 2^31), no such end-of-document token.
  HfBpeTokenizer(std::string_view json, const std::string& name, const std::string& eos_token = "");

  // InvalidArgument when a character is outside the vocabulary and there is neither byte fallback
  // nor unk_token (naming the byte offset).
  void encode(std::string_view text, std::vector<int32_t>& tokens) const override;
  // Pieces joined, byte tokens <0xAB> as their bytes, the space marker as a space, the prepended
  // marker removed: the inverse of encode except for U+2581 in the text (decodes as a space) and,
  // with Metaspace, a leading space (dropped, as Hugging Face's decoder does).
  std::string decode(std::span<const int32_t> tokens) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  const TokenizerRecord& record() const override { return record_; }

 private:
  struct Merge {
    int32_t rank;    // lower merges first
    int32_t merged;  // the id of the two pieces joined
  };
  // Appends the BPE tokens of one pre-tokenized word.
  void encode_word(std::string_view word, size_t offset, std::vector<int32_t>& tokens) const;
  int32_t id_of(std::string_view piece) const;  // -1 when not in the vocabulary

  std::unordered_map<std::string, int32_t> ids_;  // the vocabulary and the added tokens
  std::vector<std::string> pieces_;               // (vocab_size) by id; empty where no piece has the id
  std::unordered_map<uint64_t, Merge> merges_;    // key: left id << 32 | right id
  int32_t byte_ids_[256];                         // byte fallback's <0xAB> pieces, -1 where absent
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::string marker_;            // the space marker ("▁"); empty: spaces stay spaces
  bool prepend_marker_ = false;   // the normalizer or pre-tokenizer puts the marker before the text
  bool prepend_unless_present_ = false;  // Metaspace: only when the text does not start with it already
  bool split_at_marker_ = false;  // Metaspace split: every marker starts a new word
  TokenizerRecord record_;
};

}  // namespace moe
