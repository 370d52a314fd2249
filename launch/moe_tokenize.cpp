// moe-tokenize: turns text files into one token file (data/token_file.h) with the byte-level
// tokenizer (data/byte_tokenizer.h): each byte is a token 0..255, token 256 ends each input file.
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "data/byte_tokenizer.h"
#include "data/token_file.h"

namespace {

const char* kUsage = R"(usage: moe-tokenize OUT.tok INPUT.txt [INPUT2.txt ...]
Tokenises the input files byte by byte into one token file for moe-train: every byte becomes a
token 0..255 and an end-of-document token 256 follows each input (vocabulary 257, 2 bytes per
token). OUT.tok is written to OUT.tok.tmp and renamed at the end, so an existing OUT.tok is
replaced only by a complete file; it must not be one of the inputs. The format is described in
docs/token-file-format.md.
  --help   this text
)";

// The whole content of `path`; InvalidArgument naming the file when it cannot be read.
std::string read_input(const std::string& path) {
  struct stat st {};
  MOE_REQUIRE(::stat(path.c_str(), &st) == 0, "cannot read input '", path, "': ", std::strerror(errno));
  MOE_REQUIRE(!S_ISDIR(st.st_mode), "cannot read input '", path, "': it is a directory");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  MOE_REQUIRE(f != nullptr, "cannot read input '", path, "': ", std::strerror(errno));
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int read_errno = errno;
  std::fclose(f);
  MOE_REQUIRE(!failed, "cannot read input '", path, "': ", std::strerror(read_errno));
  return bytes;
}

int run(int argc, char** argv) {
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    MOE_REQUIRE(a.empty() || a[0] != '-', "unknown argument '", a, "'; accepted: OUT.tok INPUT... or --help");
    paths.push_back(a);
  }
  MOE_REQUIRE(!paths.empty(), "missing the output file and the inputs; usage: moe-tokenize OUT.tok INPUT.txt "
                              "[INPUT2.txt ...] (see --help)");
  MOE_REQUIRE(paths.size() >= 2, "no input files given after the output '", paths[0],
              "'; usage: moe-tokenize OUT.tok INPUT.txt [INPUT2.txt ...]");
  const std::string& out = paths[0];
  moe::require_output_not_input(out, std::vector<std::string>(paths.begin() + 1, paths.end()));
  std::vector<int32_t> tokens;
  for (size_t i = 1; i < paths.size(); ++i) moe::encode_document(read_input(paths[i]), tokens);
  moe::write_token_file(out, tokens, moe::kByteVocabSize);
  std::printf("moe-tokenize: wrote %zu tokens (%zu documents, vocab %lld, %u bytes per token) to %s\n",
              tokens.size(), paths.size() - 1, static_cast<long long>(moe::kByteVocabSize),
              moe::token_width_for_vocab(moe::kByteVocabSize), out.c_str());
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
