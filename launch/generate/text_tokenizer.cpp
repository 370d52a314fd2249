// Choosing moe-generate's tokenizer (launch/generate/text_tokenizer.h).
#include "launch/generate/text_tokenizer.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "data/byte_tokenizer.h"
#include "data/hf_bpe_tokenizer.h"

extern char** environ;

namespace moe {

namespace {

// Runs `args` (args[0] the program's path) and returns what it wrote to stdout and stderr together;
// InvalidArgument with that output when it cannot start or exits non-zero.
std::string run_and_capture(const std::vector<std::string>& args) {
  int fds[2];
  MOE_REQUIRE(::pipe(fds) == 0, "cannot make a pipe for '", args[0], "': ", std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  std::string output;
  char buf[4096];
  ssize_t n;
  while (spawned == 0 && ((n = ::read(fds[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)))
    if (n > 0) output.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  MOE_REQUIRE(spawned == 0, "cannot run '", args[0], "': ", std::strerror(spawned));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  MOE_REQUIRE(WIFEXITED(status) && WEXITSTATUS(status) == 0, output.empty() ? "'" + args[0] + "' failed" : output);
  return output;
}

// A SentencePiece model applied by moe-tokenize (see the header for why).
class ChildProcessSentencePiece : public Tokenizer {
 public:
  ChildProcessSentencePiece(const std::string& moe_tokenize, const std::string& model)
      : command_{moe_tokenize, "--sentencepiece", model} {
    std::istringstream in(run({"--describe"}));
    std::string vocab_key, end_key;
    int64_t end = -1;
    in >> vocab_key >> vocab_size_ >> end_key >> end;
    MOE_REQUIRE(in && vocab_key == "vocab_size" && end_key == "end_of_document", "'", moe_tokenize,
                " --describe' printed something other than \"vocab_size V end_of_document E\"");
    record_ = TokenizerRecord{TokenizerKind::SentencePiece, model, tokenizer_file_fingerprint(model), end};
  }

  void encode(std::string_view text, std::vector<int32_t>& tokens) const override {
    std::istringstream in(run({"--encode-text", std::string(text)}));
    int64_t id;
    while (in >> id) tokens.push_back(static_cast<int32_t>(id));
  }
  std::string decode(std::span<const int32_t> tokens) const override {
    std::string ids;
    for (int32_t t : tokens) {
      if (!ids.empty()) ids += ' ';
      ids += std::to_string(t);
    }
    return run({"--decode-ids", ids});
  }
  int64_t vocab_size() const override { return vocab_size_; }
  const TokenizerRecord& record() const override { return record_; }

 private:
  std::string run(std::vector<std::string> mode) const {
    std::vector<std::string> args = command_;
    args.insert(args.end(), mode.begin(), mode.end());
    return run_and_capture(args);
  }

  std::vector<std::string> command_;
  int64_t vocab_size_ = 0;
  TokenizerRecord record_;
};

}  // namespace

std::unique_ptr<Tokenizer> open_text_tokenizer(const std::string& path, const std::string& moe_tokenize) {
  if (path.empty()) return std::make_unique<ByteTokenizer>();
  if (path.ends_with(".json"))
    return std::make_unique<HfBpeTokenizer>(read_text_file(path, "tokenizer"), path);
  MOE_REQUIRE(path.ends_with(".model"), "tokenizer '", path, "' is not one moe-generate reads; accepted: a Hugging ",
              "Face tokenizer.json (a name ending in .json), a SentencePiece model (.model), or none for bytes");
  read_text_file(path, "SentencePiece model");  // a missing file named here, not in moe-tokenize's words
  return std::make_unique<ChildProcessSentencePiece>(moe_tokenize, path);
}

std::string moe_tokenize_beside_this_program() {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  MOE_REQUIRE(!ec, "cannot find this program's directory (/proc/self/exe): ", ec.message());
  return (self.parent_path() / "moe-tokenize").string();
}

}  // namespace moe
