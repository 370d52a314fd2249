// Parsers of the launch settings' text values (launch/config/launch_values.h).
#include "launch/config/launch_values.h"

#include <cctype>
#include <charconv>

namespace moe {
namespace {

bool is_host_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'; }

std::string trimmed(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

bool parse_positive_int(const std::string& text, int* out) {
  const char* end = text.data() + text.size();
  auto res = std::from_chars(text.data(), end, *out);
  return !text.empty() && res.ec == std::errc() && res.ptr == end && *out >= 1;
}

bool is_env_name(const std::string& s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  return true;
}

}  // namespace

bool parse_host_list(const std::string& text, std::vector<HostSlots>* out) {
  out->clear();
  if (trimmed(text).empty()) return true;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string entry =
        trimmed(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    HostSlots h;
    const size_t colon = entry.find(':');
    h.host = entry.substr(0, colon);
    if (h.host.empty()) return false;
    for (char c : h.host)
      if (!is_host_char(c)) return false;
    if (colon != std::string::npos && !parse_positive_int(entry.substr(colon + 1), &h.slots)) return false;
    out->push_back(h);
    if (comma == std::string::npos) return true;
    start = comma + 1;
  }
}

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::string word;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!word.empty()) words.push_back(word);
      word.clear();
    } else {
      word += c;
    }
  }
  if (!word.empty()) words.push_back(word);
  return words;
}

bool parse_env_list(const std::string& text, std::vector<EnvSetting>* out) {
  out->clear();
  for (const std::string& word : split_words(text)) {
    EnvSetting e;
    const size_t eq = word.find('=');
    e.name = word.substr(0, eq);
    e.has_value = eq != std::string::npos;
    if (e.has_value) e.value = word.substr(eq + 1);
    if (!is_env_name(e.name)) return false;
    out->push_back(e);
  }
  return true;
}

bool parse_time_limit(const std::string& text, int64_t* seconds) {
  const size_t c1 = text.find(':');
  const size_t c2 = c1 == std::string::npos ? std::string::npos : text.find(':', c1 + 1);
  if (c2 == std::string::npos || text.find(':', c2 + 1) != std::string::npos) return false;
  const std::string h = text.substr(0, c1), m = text.substr(c1 + 1, c2 - c1 - 1), s = text.substr(c2 + 1);
  auto digits = [](const std::string& part) {
    if (part.empty()) return false;
    for (char c : part)
      if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    return true;
  };
  if (!digits(h) || h.size() > 6 || m.size() != 2 || s.size() != 2 || !digits(m) || !digits(s)) return false;
  const int64_t hours = std::stoll(h), minutes = std::stoll(m), secs = std::stoll(s);
  if (minutes >= 60 || secs >= 60) return false;
  *seconds = hours * 3600 + minutes * 60 + secs;
  return *seconds > 0;
}

}  // namespace moe
