// Document boundaries inside packed sequences (data/documents.h).
#include "data/documents.h"

#include "core/check.h"
#include "data/byte_tokenizer.h"

namespace moe {

int32_t resolve_document_end_token(const DataConfig& cfg, int64_t vocab_size, const std::string& files) {
  if (cfg.document_end_token == DataConfig::kAutoEndToken) {
    MOE_REQUIRE(vocab_size == kByteVocabSize, "data.document_end_token = auto stands for the byte tokenizer's "
                "end-of-document token ", kByteEndOfDocument, ", but ", files, " has vocab_size ", vocab_size,
                ", not the byte tokenizer's ", kByteVocabSize, "; set data.document_end_token to the token that "
                "ends a document in this vocabulary");
    return kByteEndOfDocument;
  }
  MOE_REQUIRE(cfg.document_end_token < vocab_size, "data.document_end_token = ", cfg.document_end_token,
              " is not a token of ", files, ", whose vocab_size is ", vocab_size, "; accepted: 0 to ",
              vocab_size - 1, ", or auto");
  return static_cast<int32_t>(cfg.document_end_token);
}

void document_positions(const int32_t* inputs, int64_t B, int64_t S, int32_t end_token, int32_t* positions) {
  for (int64_t b = 0; b < B; ++b) {
    int32_t position = 0;
    for (int64_t s = 0; s < S; ++s) {
      positions[b * S + s] = position;
      position = inputs[b * S + s] == end_token ? 0 : position + 1;
    }
  }
}

}  // namespace moe
