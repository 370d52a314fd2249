// The tokenizer moe-generate encodes its prompt and decodes its output with: the byte tokenizer, a
// Hugging Face tokenizer.json, or a SentencePiece model applied by moe-tokenize in a child process.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace moe {

// `path` empty: the byte tokenizer (data/byte_tokenizer.h); a file ending in .json: a Hugging Face
// tokenizer.json BPE (data/hf_bpe_tokenizer.h); ending in .model: a SentencePiece model, which
// `moe_tokenize` (the moe-tokenize binary's path) applies: each encode and decode runs it once
// (--encode-text, --decode-ids; --describe here). InvalidArgument naming the file when it cannot be
// read or parsed (with moe-tokenize's own message), and for any other kind of file.
//
// Why a child process: Debian's libsentencepiece bundles a protobuf-lite whose symbols clash with the
// libprotobuf that reads checkpoints, and a process that loads both crashes at start-up (CMakeLists.txt,
// moe_sentencepiece); moe-generate reads checkpoints, moe-tokenize does not.
std::unique_ptr<Tokenizer> open_text_tokenizer(const std::string& path, const std::string& moe_tokenize);

// The moe-tokenize next to the running executable (the directory of /proc/self/exe).
std::string moe_tokenize_beside_this_program();

}  // namespace moe
