// The command line of moe-run and moe-submit (launch/launcher/cli.h).
#include "launch/launcher/cli.h"

#include <unistd.h>

#include <filesystem>

#include "core/check.h"
#include "core/command_line.h"

namespace moe {

LauncherArgs parse_launcher_args(const std::vector<std::string>& args, bool with_scheduler) {
  LauncherArgs out;
  for (const std::string& a : args)
    if (a == "--help" || a == "-h") out.help = true;
  if (out.help) return out;
  const std::string accepted =
      std::string("--help, --dry-run, --cpus N") + (with_scheduler ? ", --scheduler slurm|pbs" : "");
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    // "--name=value" or "--name value": the value of option `name`.
    auto value_of = [&](const std::string& name, std::string* value) {
      if (a == name) {
        MOE_REQUIRE(i + 1 < args.size(), a, " needs a value");
        *value = args[++i];
        return true;
      }
      if (a.rfind(name + "=", 0) == 0) {
        *value = a.substr(name.size() + 1);
        return true;
      }
      return false;
    };
    std::string value;
    if (a == "--dry-run") {
      out.dry_run = true;
    } else if (value_of("--cpus", &value)) {
      out.cpus = static_cast<int>(parse_integer_argument("--cpus", value, 1, INT_MAX));
    } else if (with_scheduler && value_of("--scheduler", &value)) {
      out.scheduler = value;
    } else if (a.rfind("-", 0) == 0) {
      throw InvalidArgument("unknown option '" + a + "'; accepted: " + accepted);
    } else if (out.config.empty()) {
      out.config = a;
    } else {
      MOE_REQUIRE(a.find('=') != std::string::npos, "'", a,
                  "' is not a config override (key.path=value); only one CONFIG.yaml is taken");
      out.overrides.push_back(a);
    }
  }
  MOE_REQUIRE(!out.config.empty(), "missing CONFIG.yaml (see --help)");
  return out;
}

std::string sibling_executable(const std::string& name) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  MOE_REQUIRE(!ec, "cannot find this program's own path (/proc/self/exe): ", ec.message());
  const std::filesystem::path path = self.parent_path() / name;
  MOE_REQUIRE(::access(path.c_str(), X_OK) == 0, name, " not found next to ", self.string(), " (looked for ",
              path.string(), "); build it (cmake --build BUILD_DIR)");
  return path.string();
}

}  // namespace moe
