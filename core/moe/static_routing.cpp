// Static routing maps: the seeded hash and the routing table file (core/moe/static_routing.h).
#include "core/moe/static_routing.h"

#include <charconv>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string_view>

#include "core/check.h"
#include "core/random.h"

namespace moe {

std::vector<int32_t> hash_routes(uint64_t seed, int64_t vocab_size, int64_t num_experts, int64_t top_k) {
  MOE_ASSERT(top_k >= 1 && top_k <= num_experts, "MoEConfig::validate checks 1 <= top_k <= num_experts");
  const uint64_t s = stream_id(seed, "hash_routing");
  const auto E = static_cast<uint64_t>(num_experts);
  std::vector<int32_t> routes(static_cast<size_t>(vocab_size * top_k));
  std::vector<int32_t> perm(E);
  for (int64_t v = 0; v < vocab_size; ++v) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int64_t j = 0; j < top_k; ++j) {  // Fisher-Yates, stopped after top_k steps
      const uint64_t u = mix64(s ^ mix64(static_cast<uint64_t>(v) * E + static_cast<uint64_t>(j)));
      std::swap(perm[j], perm[j + u % (E - j)]);
      routes[v * top_k + j] = perm[j];
    }
  }
  return routes;
}

namespace {

constexpr const char* kTableFormat =
    "accepted lines: 'ID: E1 .. Ek', 'FIRST-LAST: E1 .. Ek' or '*: E1 .. Ek' with k = top_k distinct experts";

// A whole field of decimal digits (no sign), below 2^62; false otherwise.
bool parse_count(std::string_view s, int64_t& out) {
  if (s.empty() || s.size() > 18) return false;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size() && s[0] != '-' && s[0] != '+';
}

std::vector<std::string_view> fields_of(std::string_view s) {
  std::vector<std::string_view> out;
  size_t at = 0;
  while (true) {
    at = s.find_first_not_of(" \t\r", at);
    if (at == std::string_view::npos) return out;
    const size_t end = std::min(s.find_first_of(" \t\r", at), s.size());
    out.push_back(s.substr(at, end - at));
    at = end;
  }
}

std::string quoted(std::string_view s) {
  std::string q = "'";  // built by appends: GCC 12 warns falsely (-Wrestrict) about a chain of operator+
  q.append(s.substr(0, 60));
  q.append(s.size() > 60 ? "...'" : "'");
  return q;
}

}  // namespace

std::vector<int32_t> read_routing_table(const std::string& path, int64_t vocab_size, int64_t num_experts,
                                        int64_t top_k) {
  const std::string file = "routing_table = " + path;
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  MOE_REQUIRE(!ec && status.type() == std::filesystem::file_type::regular, file, ": ",
              ec ? "cannot open it: " + ec.message() : std::string("not a regular file"),
              "; accepted: a text file of 'token id: experts' lines (docs/routing.md, \"Table routing\")");
  std::ifstream in(path);
  MOE_REQUIRE(in.good(), file, ": cannot open it for reading");
  const int64_t V = vocab_size, k = top_k;
  std::vector<int32_t> routes(static_cast<size_t>(V * k), -1);
  std::vector<int64_t> listed_on(static_cast<size_t>(V), 0);  // the line listing each id, 0: none yet
  std::vector<int32_t> fallback;                               // the '*' line's experts
  int64_t fallback_line = 0;
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    const std::string_view content = std::string_view(text).substr(0, text.find('#'));
    const std::vector<std::string_view> f = fields_of(content);
    if (f.empty()) continue;
    auto fail = [&](const auto&... what) {
      throw InvalidArgument(detail::concat(file, ", line ", line, ": ", what...));
    };
    const std::string_view key = f[0];
    if (key.size() < 2 || key.back() != ':') fail(quoted(content), " does not start with 'ID:'; ", kTableFormat);
    const std::string_view ids = key.substr(0, key.size() - 1);
    // The experts.
    std::vector<int32_t> experts;
    for (size_t i = 1; i < f.size(); ++i) {
      int64_t e = 0;
      if (!parse_count(f[i], e)) fail("expert ", quoted(f[i]), " is not a number; ", kTableFormat);
      if (e >= num_experts) fail("expert ", e, " is outside [0, num_experts = ", num_experts, ")");
      for (int32_t seen : experts)
        if (seen == e) fail("expert ", e, " is listed twice; a token's top_k experts are distinct");
      experts.push_back(static_cast<int32_t>(e));
    }
    if (static_cast<int64_t>(experts.size()) != k)
      fail(quoted(content), " lists ", experts.size(), " expert(s); expected top_k = ", k);
    if (ids == "*") {
      if (fallback_line > 0) fail("a second '*' line (the first is line ", fallback_line, "); accepted: at most one");
      fallback = experts;
      fallback_line = line;
      continue;
    }
    // The ids: one, or an inclusive range.
    int64_t first = 0, last = 0;
    const size_t dash = ids.find('-');
    const bool ok = dash == std::string_view::npos
                        ? parse_count(ids, first) && (last = first, true)
                        : parse_count(ids.substr(0, dash), first) && parse_count(ids.substr(dash + 1), last);
    if (!ok) fail("token ids ", quoted(ids), " are not 'ID' or 'FIRST-LAST' (decimal numbers); ", kTableFormat);
    if (first > last) fail("the range ", first, "-", last, " is empty; accepted: FIRST <= LAST");
    if (last >= V) fail("token id ", last, " is outside [0, vocab_size = ", V, ")");
    for (int64_t v = first; v <= last; ++v) {
      if (listed_on[v] != 0) fail("token id ", v, " is already listed on line ", listed_on[v], "; list each id once");
      listed_on[v] = line;
      std::copy(experts.begin(), experts.end(), routes.begin() + v * k);
    }
  }
  MOE_REQUIRE(!in.bad(), file, ": reading it failed");
  int64_t missing = 0, first_missing = -1;
  for (int64_t v = 0; v < V; ++v) {
    if (listed_on[v] != 0) continue;
    if (fallback_line > 0) {
      std::copy(fallback.begin(), fallback.end(), routes.begin() + v * k);
      continue;
    }
    if (missing++ == 0) first_missing = v;
  }
  MOE_REQUIRE(missing == 0, file, ": ", missing, " token id(s) are not listed, the first ", first_missing,
              ", and there is no '*' line; accepted: every id in [0, vocab_size = ", V,
              ") listed, or a '*: E1 .. Ek' line for the ids not listed");
  return routes;
}

std::vector<int32_t> static_routes(const MoEConfig& cfg, uint64_t layer_seed) {
  MOE_ASSERT(is_static(cfg.routing), "only hash and table routing have a static map");
  if (cfg.routing == Routing::Hash) return hash_routes(layer_seed, cfg.vocab_size, cfg.num_experts, cfg.top_k);
  return read_routing_table(cfg.routing_table, cfg.vocab_size, cfg.num_experts, cfg.top_k);
}

}  // namespace moe
