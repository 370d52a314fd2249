// Choosing moe-generate's tokenizer (launch/generate/text_tokenizer.h).
#include "launch/generate/text_tokenizer.h"

#include "core/check.h"
#include "data/byte_tokenizer.h"
#include "data/hf_bpe_tokenizer.h"

namespace moe {

std::unique_ptr<Tokenizer> open_text_tokenizer(const std::string& path) {
  if (path.empty()) return std::make_unique<ByteTokenizer>();
  MOE_REQUIRE(path.ends_with(".json"), "tokenizer '", path, "' is not one moe-generate reads; accepted: a Hugging ",
              "Face tokenizer.json (a name ending in .json), or none for bytes (a SentencePiece .model cannot be ",
              "loaded beside the checkpoint reader's protobuf)");
  return std::make_unique<HfBpeTokenizer>(read_text_file(path, "tokenizer"), path);
}

}  // namespace moe
