// What the tokenizers share (data/tokenizer.h).
#include "data/tokenizer.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/check.h"
#include "core/crc32c.h"

namespace moe {

void encode_document(const Tokenizer& tokenizer, std::string_view text, std::vector<int32_t>& tokens) {
  tokenizer.encode(text, tokens);
  tokens.push_back(static_cast<int32_t>(tokenizer.record().end_of_document));
}

std::string read_text_file(const std::string& path, const std::string& what) {
  struct stat st {};
  MOE_REQUIRE(::stat(path.c_str(), &st) == 0, "cannot read ", what, " '", path, "': ", std::strerror(errno));
  MOE_REQUIRE(!S_ISDIR(st.st_mode), "cannot read ", what, " '", path, "': it is a directory");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  MOE_REQUIRE(f != nullptr, "cannot read ", what, " '", path, "': ", std::strerror(errno));
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int read_errno = errno;
  std::fclose(f);
  MOE_REQUIRE(!failed, "cannot read ", what, " '", path, "': ", std::strerror(read_errno));
  return bytes;
}

uint32_t tokenizer_file_fingerprint(const std::string& path) {
  const std::string bytes = read_text_file(path, "tokenizer");
  return crc32c(bytes.data(), bytes.size());
}

}  // namespace moe
