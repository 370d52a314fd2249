// The command line shared by moe-run and moe-submit, and finding moe-train next to them.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace moe {

struct LauncherArgs {
  bool help = false;
  bool dry_run = false;
  std::optional<int> cpus;             // --cpus N: cores per node for the checks
  std::string scheduler;               // --scheduler NAME (moe-submit only), as given
  std::string config;                  // CONFIG.yaml, the first word that is not an option
  std::vector<std::string> overrides;  // key.path=value words after it
};

// Parses `args` (argv without the program name). Options may come anywhere: --help/-h, --dry-run,
// --cpus N (or --cpus=N), and with `with_scheduler` --scheduler NAME (or --scheduler=NAME). Throws
// InvalidArgument naming the argument for an unknown option, a missing or malformed value, a
// missing config, or a word after the config that is not key.path=value. With --help nothing else
// is checked.
LauncherArgs parse_launcher_args(const std::vector<std::string>& args, bool with_scheduler);

// The absolute path of `name` in the directory of the running executable (/proc/self/exe): how
// moe-run and moe-submit find the moe-train built beside them. Throws InvalidArgument when there is
// no such executable file.
std::string sibling_executable(const std::string& name);

}  // namespace moe
