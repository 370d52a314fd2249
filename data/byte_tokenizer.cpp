// The byte-level tokenizer (data/byte_tokenizer.h).
#include "data/byte_tokenizer.h"

#include "core/check.h"

namespace moe {

void encode_bytes(std::string_view bytes, std::vector<int32_t>& tokens) {
  tokens.reserve(tokens.size() + bytes.size());
  for (char c : bytes) tokens.push_back(static_cast<int32_t>(static_cast<unsigned char>(c)));
}

std::string decode_bytes(std::span<const int32_t> tokens, std::string_view end_of_document) {
  std::string out;
  out.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t t = tokens[i];
    if (t == kByteEndOfDocument) {
      out += end_of_document;
    } else {
      MOE_REQUIRE(t >= 0 && t < 256, "byte tokenizer: token ", t, " at position ", i,
                  " is not a byte-level token; accepted: 0..255, and ", kByteEndOfDocument,
                  " for end of document");
      out.push_back(static_cast<char>(static_cast<unsigned char>(t)));
    }
  }
  return out;
}

}  // namespace moe
