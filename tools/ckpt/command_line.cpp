// Parsing moe-ckpt's command lines (tools/ckpt/command_line.h).
#include "tools/ckpt/command_line.h"

#include <algorithm>
#include <cstdio>

#include "core/check.h"
#include "core/command_line.h"

namespace moe::ckpt {

namespace {

std::string accepted_options(const CommandSpec& spec) {
  std::string s;
  for (const auto& o : spec.value_options) s += (s.empty() ? "" : ", ") + o + " VALUE";
  for (const auto& o : spec.flags) s += (s.empty() ? "" : ", ") + o;
  return s.empty() ? "--help" : s + ", --help";
}

}  // namespace

bool parse_args(const CommandSpec& spec, const std::vector<std::string>& argv, Args* args) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(spec.help, stdout);
      return false;
    }
    if (a.size() > 2 && a.rfind("--", 0) == 0) {
      const size_t eq = a.find('=');
      const std::string name = a.substr(0, eq);
      const bool takes_value =
          std::find(spec.value_options.begin(), spec.value_options.end(), name) != spec.value_options.end();
      const bool flag = std::find(spec.flags.begin(), spec.flags.end(), name) != spec.flags.end();
      MOE_REQUIRE(takes_value || flag, "unknown option '", name, "' for '", spec.name,
                  "'; accepted: ", accepted_options(spec));
      MOE_REQUIRE(!args->has(name), "option ", name, " given twice");
      if (flag) {
        MOE_REQUIRE(eq == std::string::npos, "option ", name, " takes no value");
        args->options[name] = "";
      } else if (eq != std::string::npos) {
        args->options[name] = a.substr(eq + 1);
      } else {
        MOE_REQUIRE(i + 1 < argv.size(), "option ", name, " needs a value (see moe-ckpt ", spec.name, " --help)");
        args->options[name] = argv[++i];
      }
      continue;
    }
    args->positional.push_back(a);
  }
  const int n = static_cast<int>(args->positional.size());
  MOE_REQUIRE(n >= spec.positionals, "'", spec.name, "' needs ", spec.positionals, " argument",
              spec.positionals > 1 ? "s" : "", ", got ", n, "; usage: moe-ckpt ", spec.name, " --help");
  MOE_REQUIRE(n <= spec.positionals, "'", spec.name, "' takes ", spec.positionals, " argument",
              spec.positionals > 1 ? "s" : "", "; unexpected '", args->positional[spec.positionals], "'");
  return true;
}

uint64_t parse_bytes(const std::string& option, const std::string& value) {
  std::string digits = value, unit;
  const size_t cut = value.find_first_not_of("0123456789");
  if (cut != std::string::npos) {
    digits = value.substr(0, cut);
    unit = value.substr(cut);
  }
  uint64_t scale = 1;
  if (unit == "K" || unit == "KiB" || unit == "KB")
    scale = uint64_t{1} << 10;
  else if (unit == "M" || unit == "MiB" || unit == "MB")
    scale = uint64_t{1} << 20;
  else if (unit == "G" || unit == "GiB" || unit == "GB")
    scale = uint64_t{1} << 30;
  else
    MOE_REQUIRE(unit.empty() || unit == "B", option, ": expected bytes such as 4096, 64K, 512M or 4G, got '", value,
                "'");
  const int64_t n = parse_integer_argument(option, digits, 1, static_cast<int64_t>(INT64_MAX / scale));
  return static_cast<uint64_t>(n) * scale;
}

}  // namespace moe::ckpt
