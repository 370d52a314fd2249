// moe-ckpt's command lines: what each command accepts, its arguments parsed against that, and the
// parser of byte counts. Every problem is an InvalidArgument naming the option or argument (moe-ckpt
// exits 2).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe::ckpt {

// What a command accepts (the driver, tools/moe_ckpt.cpp, holds one per command).
struct CommandSpec {
  const char* name;
  const char* help;
  int positionals;                         // exact number of positional arguments
  std::vector<std::string> value_options;  // "--ep" takes a value
  std::vector<std::string> flags;          // "--config" takes none
};

// A command line parsed against its CommandSpec.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;  // flags map to ""
  bool has(const std::string& o) const { return options.count(o) > 0; }
  const std::string& get(const std::string& o) const { return options.at(o); }
};

// Parses argv after the command name against spec. Returns false when --help (or -h) was asked for,
// after printing spec.help to stdout. Options take their value as "--ep 2" or "--ep=2"; anything not
// starting with "--" is positional. InvalidArgument for an unknown or repeated option, a flag with a
// value, an option without one, or a number of positional arguments other than spec.positionals.
bool parse_args(const CommandSpec& spec, const std::vector<std::string>& argv, Args* args);

// Numbers: parse_integer_argument and parse_number_argument (core/command_line.h).
// A byte count of at least 1: "4096", "64K", "512M", "4G" (binary units, an optional trailing "iB" or
// "B"); InvalidArgument naming option otherwise.
uint64_t parse_bytes(const std::string& option, const std::string& value);

}  // namespace moe::ckpt
