// Document boundaries inside packed sequences (data.document_mask): which token ends a document, and
// each token's position in its document, which the model's attention masks to and its position
// encoding counts from (core/ops.h, "Documents packed into a sequence").
#pragma once

#include <cstdint>
#include <string>

#include "data/data_config.h"
#include "data/token_file.h"

namespace moe {

// The token that ends a document in a token file made by `made_by` with vocabulary `vocab_size` (named
// `file` in messages): data.document_end_token, or for "auto" (-1) the end-of-document token the file
// records (data/token_file.h). InvalidArgument, naming the key, the file and what to set, for "auto"
// when the file records none, or a token outside [0, vocab_size).
int32_t resolve_document_end_token(const DataConfig& cfg, const TokenizerRecord& made_by, int64_t vocab_size,
                                   const std::string& file);

// positions[b*S + s] = the position of input token s of sequence b in its document: 0 at s = 0 (a
// sequence's first token starts a document as far as the model can see) and after each end_token, so
// the end token itself is the last token of the document it ends. inputs and positions (B*S).
void document_positions(const int32_t* inputs, int64_t B, int64_t S, int32_t end_token, int32_t* positions);

}  // namespace moe
