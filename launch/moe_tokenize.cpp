// moe-tokenize: turns text files into one token file (data/token_file.h) with a tokenizer: the
// byte-level one (data/byte_tokenizer.h, the default), a SentencePiece model it applies or trains
// (data/sentencepiece/sentencepiece_tokenizer.h), or a Hugging Face tokenizer.json BPE (data/hf_bpe_tokenizer.h).
// The tokenizer's end-of-document token follows each input file.
#include <cstdio>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "data/byte_tokenizer.h"
#include "data/hf_bpe_tokenizer.h"
#include "data/sentencepiece/sentencepiece_tokenizer.h"
#include "data/token_file.h"

namespace {

const char* kUsage = R"(usage: moe-tokenize [TOKENIZER] OUT.tok INPUT.txt [INPUT2.txt ...]
Tokenises the input files into one token file for moe-train; the tokenizer's end-of-document token
follows each input. The token file records the tokenizer (its kind, the model file as given, a
CRC32C fingerprint of it, the end-of-document token): moe-train names it when the vocabulary does
not fit, and data.tokenizer in a run config makes moe-train check the fingerprint.
TOKENIZER is one of:
  (none)                          bytes: every byte a token 0..255, end of document 256
                                  (vocabulary 257, 2 bytes per token)
  --sentencepiece MODEL.model     a trained SentencePiece model; end of document: its </s>
  --train-sentencepiece PREFIX --vocab-size N [--model-type bpe|unigram]
                                  first trains a SentencePiece model of exactly N pieces (>= 260) on
                                  the inputs' lines, written to PREFIX.model and PREFIX.vocab
                                  (model type default bpe; no normalization, whitespace kept, byte
                                  fallback: decoding gives the text back), then applies it
  --hf-tokenizer TOKENIZER.json [--eos-token TEXT]
                                  a Hugging Face BPE tokenizer.json in the style of Llama 2, Mistral
                                  and Mixtral ("▁" for spaces, byte fallback); byte-level BPE (GPT-2,
                                  Llama 3) is refused. End of document: --eos-token, else the first of
                                  </s>, <|endoftext|>, <|end_of_text|> it has
OUT.tok is written to OUT.tok.tmp and renamed at the end, so an existing OUT.tok is replaced only by
a complete file; it must not be one of the inputs. The format is described in
docs/token-file-format.md.

usage: moe-tokenize [TOKENIZER] (--encode-text TEXT | --decode-ids "ID ID ..." | --describe)
Applies the tokenizer to one text instead, writing no file: --encode-text prints the tokens of TEXT
(without an end-of-document token) on one line, separated by spaces; --decode-ids prints the text of
the tokens, nothing added; --describe prints "vocab_size V end_of_document E". (moe-generate uses these
for a SentencePiece model, which it cannot load itself.)
  --help   this text
)";

constexpr const char* kAccepted = "accepted: [--sentencepiece MODEL.model | --train-sentencepiece PREFIX "
                                  "--vocab-size N [--model-type bpe|unigram] | --hf-tokenizer TOKENIZER.json "
                                  "[--eos-token TEXT]] OUT.tok INPUT..., or [--sentencepiece MODEL.model | "
                                  "--hf-tokenizer TOKENIZER.json [--eos-token TEXT]] (--encode-text TEXT | "
                                  "--decode-ids IDS | --describe), or --help";

// Applying the tokenizer to one text, without a token file.
enum class Apply { None, EncodeText, DecodeIds, Describe };

struct Options {
  std::string sentencepiece, train_prefix, hf_tokenizer, eos_token, model_type;
  int64_t vocab_size = 0;
  std::vector<std::string> paths;  // OUT.tok, then the inputs
  Apply apply = Apply::None;
  std::string apply_to;  // the text or the ids
};

// "1 2 3" as tokens; InvalidArgument naming the first entry that is not an int32 >= 0.
std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::istringstream in(text);
  std::string word;
  while (in >> word) ids.push_back(static_cast<int32_t>(moe::parse_integer_argument("--decode-ids", word, 0, INT32_MAX)));
  return ids;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      MOE_REQUIRE(i + 1 < argc, a, " needs a value; ", kAccepted);
      return argv[++i];
    };
    if (a == "--sentencepiece") o.sentencepiece = value();
    else if (a == "--train-sentencepiece") o.train_prefix = value();
    else if (a == "--vocab-size") o.vocab_size = moe::parse_integer_argument(a, value(), 1, moe::kTokenFileMaxVocab);
    else if (a == "--model-type") o.model_type = value();
    else if (a == "--hf-tokenizer") o.hf_tokenizer = value();
    else if (a == "--eos-token") o.eos_token = value();
    else if (a == "--encode-text" || a == "--decode-ids" || a == "--describe") {
      MOE_REQUIRE(o.apply == Apply::None, "--encode-text, --decode-ids and --describe: give at most one");
      o.apply = a == "--encode-text" ? Apply::EncodeText : a == "--decode-ids" ? Apply::DecodeIds : Apply::Describe;
      if (o.apply != Apply::Describe) o.apply_to = value();
    }
    else if (!a.empty() && a[0] == '-') throw moe::InvalidArgument("unknown argument '" + a + "'; " + kAccepted);
    else o.paths.push_back(a);
  }
  const int chosen = !o.sentencepiece.empty() + !o.train_prefix.empty() + !o.hf_tokenizer.empty();
  MOE_REQUIRE(chosen <= 1, "--sentencepiece, --train-sentencepiece and --hf-tokenizer choose the tokenizer; give "
              "at most one");
  MOE_REQUIRE(o.train_prefix.empty() == (o.vocab_size == 0), o.train_prefix.empty()
              ? "--vocab-size is only for --train-sentencepiece" : "--train-sentencepiece needs --vocab-size N");
  MOE_REQUIRE(!o.train_prefix.empty() || o.model_type.empty(), "--model-type is only for --train-sentencepiece");
  MOE_REQUIRE(!o.hf_tokenizer.empty() || o.eos_token.empty(), "--eos-token is only for --hf-tokenizer");
  if (o.model_type.empty()) o.model_type = "bpe";
  if (o.apply != Apply::None) {
    MOE_REQUIRE(o.train_prefix.empty() && o.paths.empty(), "--encode-text, --decode-ids and --describe apply a ",
                "tokenizer to one text: no --train-sentencepiece, output or inputs; ", kAccepted);
    return o;
  }
  MOE_REQUIRE(!o.paths.empty(), "missing the output file and the inputs; usage: moe-tokenize [TOKENIZER] OUT.tok "
              "INPUT.txt [INPUT2.txt ...] (see --help)");
  MOE_REQUIRE(o.paths.size() >= 2, "no input files given after the output '", o.paths[0],
              "'; usage: moe-tokenize [TOKENIZER] OUT.tok INPUT.txt [INPUT2.txt ...]");
  return o;
}

// The tokenizer --sentencepiece, --hf-tokenizer or (neither) the byte one.
std::unique_ptr<moe::Tokenizer> open_tokenizer(const Options& o) {
  if (!o.sentencepiece.empty()) return std::make_unique<moe::SentencePieceTokenizer>(o.sentencepiece);
  if (!o.hf_tokenizer.empty())
    return std::make_unique<moe::HfBpeTokenizer>(moe::read_text_file(o.hf_tokenizer, "tokenizer"), o.hf_tokenizer,
                                                 o.eos_token);
  return std::make_unique<moe::ByteTokenizer>();
}

int run(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  const Options o = parse(argc, argv);
  if (o.apply != Apply::None) {
    const std::unique_ptr<moe::Tokenizer> tokenizer = open_tokenizer(o);
    if (o.apply == Apply::EncodeText) {
      std::vector<int32_t> tokens;
      tokenizer->encode(o.apply_to, tokens);
      for (size_t i = 0; i < tokens.size(); ++i) std::printf("%s%d", i == 0 ? "" : " ", tokens[i]);
      std::printf("\n");
    } else if (o.apply == Apply::DecodeIds) {
      const std::string text = tokenizer->decode(parse_ids(o.apply_to));
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else {
      std::printf("vocab_size %lld end_of_document %lld\n", static_cast<long long>(tokenizer->vocab_size()),
                  static_cast<long long>(tokenizer->record().end_of_document));
    }
    return 0;
  }
  const std::string& out = o.paths[0];
  const std::vector<std::string> inputs(o.paths.begin() + 1, o.paths.end());
  std::vector<std::string> not_outputs = inputs;  // every file this run reads
  for (const std::string* model : {&o.sentencepiece, &o.hf_tokenizer})
    if (!model->empty()) not_outputs.push_back(*model);
  moe::require_output_not_input(out, not_outputs);

  std::vector<std::string> texts;
  for (const std::string& path : inputs) texts.push_back(moe::read_text_file(path, "input"));
  std::unique_ptr<moe::Tokenizer> tokenizer;
  if (!o.train_prefix.empty()) {
    moe::require_output_not_input(o.train_prefix + ".model", inputs);
    moe::train_sentencepiece(texts, {o.train_prefix, o.vocab_size, o.model_type});
    std::printf("moe-tokenize: trained a SentencePiece %s model of %lld pieces: %s.model\n", o.model_type.c_str(),
                static_cast<long long>(o.vocab_size), o.train_prefix.c_str());
    tokenizer = std::make_unique<moe::SentencePieceTokenizer>(o.train_prefix + ".model");
  } else {
    tokenizer = open_tokenizer(o);
  }

  std::vector<int32_t> tokens;
  for (const std::string& text : texts) moe::encode_document(*tokenizer, text, tokens);
  const int64_t vocab = tokenizer->vocab_size();
  moe::write_token_file(out, tokens, vocab, tokenizer->record());
  std::printf("moe-tokenize: wrote %zu tokens (%zu documents, tokenizer %s, vocab %lld, %u bytes per token) to %s\n",
              tokens.size(), inputs.size(), moe::describe_tokenizer(tokenizer->record()).c_str(),
              static_cast<long long>(vocab), moe::token_width_for_vocab(vocab), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const moe::InvalidArgument& e) {
    std::fprintf(stderr, "moe-tokenize: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-tokenize: error: %s\n", e.what());
    return 1;
  }
}
