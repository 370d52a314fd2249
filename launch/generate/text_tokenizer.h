// The tokenizer moe-generate encodes its prompt and decodes its output with: the byte tokenizer, or the
// one a model file names (a Hugging Face tokenizer.json).
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace moe {

// `path` empty: the byte tokenizer (data/byte_tokenizer.h); a file ending in .json: a Hugging Face
// tokenizer.json BPE (data/hf_bpe_tokenizer.h). InvalidArgument naming the file when it cannot be read
// or parsed, and for any other kind of file (a SentencePiece .model included: moe-generate reads
// protobuf checkpoints and so cannot load Debian's libsentencepiece, whose bundled protobuf-lite
// crashes a process that also loads libprotobuf; tokenize such prompts with moe-tokenize).
std::unique_ptr<Tokenizer> open_text_tokenizer(const std::string& path);

}  // namespace moe
