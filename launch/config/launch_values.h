// Parsers for the text-valued launch settings of the config (launch.hosts, launch.env,
// launch.extra_args, scheduler.time_limit), shared by the config schema (which checks the format of
// each key) and the launchers in launch/launcher/ (which use the parsed values).
//
// Each parser is pure: it returns false (and leaves the outputs in an unspecified state) when the
// text is not of the documented form; the caller names the key in its message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// One entry of launch.hosts: a host name and how many ranks it takes (slots).
struct HostSlots {
  std::string host;
  int slots = 1;
  bool operator==(const HostSlots&) const = default;
};

// "a:2,b:2" or "a,b" (one slot each); spaces around entries are ignored. A host name is
// [A-Za-z0-9._-]+ and slots an int >= 1. The empty string is the empty list.
bool parse_host_list(const std::string& text, std::vector<HostSlots>* out);

// One entry of launch.env: NAME=value sets the variable for every rank; NAME alone passes the value
// it has where the launcher runs.
struct EnvSetting {
  std::string name;
  std::string value;
  bool has_value = false;
  bool operator==(const EnvSetting&) const = default;
};

// Whitespace-separated NAME=value or NAME entries; NAME is [A-Za-z_][A-Za-z0-9_]*, a value is any
// text without whitespace. The empty string is the empty list.
bool parse_env_list(const std::string& text, std::vector<EnvSetting>* out);

// Whitespace-separated words (launch.extra_args); never fails, the empty string gives no words.
std::vector<std::string> split_words(const std::string& text);

// "HH:MM:SS" (hours any number of digits >= 1, minutes and seconds two digits < 60) to seconds > 0.
bool parse_time_limit(const std::string& text, int64_t* seconds);

}  // namespace moe
