// Document boundaries inside packed sequences (data/documents.h).
#include "data/documents.h"

#include "core/check.h"

namespace moe {

int32_t resolve_document_end_token(const DataConfig& cfg, const TokenizerRecord& made_by, int64_t vocab_size,
                                   const std::string& file) {
  if (cfg.document_end_token == DataConfig::kAutoEndToken) {
    MOE_REQUIRE(made_by.end_of_document >= 0, "data.document_end_token = auto takes the end-of-document token the "
                "file records, but ", file, " (tokenizer ", describe_tokenizer(made_by), ", vocab_size ", vocab_size,
                ") records none; set data.document_end_token to the token that ends a document in this vocabulary");
    return static_cast<int32_t>(made_by.end_of_document);
  }
  MOE_REQUIRE(cfg.document_end_token < vocab_size, "data.document_end_token = ", cfg.document_end_token,
              " is not a token of ", file, ", whose vocab_size is ", vocab_size, "; accepted: 0 to ",
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
