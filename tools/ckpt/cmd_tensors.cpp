// moe-ckpt tensors: one line per stored tensor entry, with its L2 norm, min and max.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/checkpoint/checkpoint.h"
#include "core/checkpoint/checkpoint_paths.h"
#include "tools/ckpt/ckpt_data.h"
#include "tools/ckpt/commands.h"

namespace moe::ckpt {

const char* const kTensorsHelp = R"(usage: moe-ckpt tensors CKPT [--filter REGEX]

One line per stored tensor (expert tensors: one line per expert slice, "[expert N]"): name, shape,
dtype, file@offset, L2 norm, min, max. Every entry is read and its CRC checked; a damaged entry is
reported on its line and the exit status is 1.
  --filter REGEX   only names matching REGEX (ECMAScript syntax, matched anywhere in the name)
)";

namespace {

struct Stats {
  double norm = 0, min = 0, max = 0;
};

Stats stats_of(const char* bytes, const std::string& dtype, uint64_t n) {
  Stats s;
  s.min = std::numeric_limits<double>::infinity();
  s.max = -s.min;
  double sq = 0;
  for (uint64_t i = 0; i < n; ++i) {
    double x;
    if (dtype == "float32") {
      float f;
      std::memcpy(&f, bytes + 4 * i, 4);
      x = f;
    } else {
      int32_t k;
      std::memcpy(&k, bytes + 4 * i, 4);
      x = k;
    }
    sq += x * x;
    s.min = std::min(s.min, x);
    s.max = std::max(s.max, x);
  }
  s.norm = std::sqrt(sq);
  if (n == 0) s.min = s.max = 0;
  return s;
}

}  // namespace

int cmd_tensors(const Args& args) {
  std::regex filter;
  if (args.has("--filter")) {
    try {
      filter = std::regex(args.get("--filter"));
    } catch (const std::regex_error& e) {
      throw InvalidArgument("--filter: '" + args.get("--filter") + "' is not a regular expression: " + e.what());
    }
  }
  const std::string dir = resolve_checkpoint(args.positional[0]);
  std::unique_ptr<CheckpointReader> reader = open_checkpoint(dir);
  const std::vector<TensorInfo> tensors = list_tensors(*reader);
  std::vector<std::vector<std::string>> rows;
  int damaged = 0;
  std::vector<char> buf;
  for (const TensorInfo& t : tensors) {
    if (args.has("--filter") && !std::regex_search(t.name, filter)) continue;
    for (const checkpoint::TensorEntry* e : t.parts) {
      buf.resize(e->length());
      const Status s = reader->read(*e, buf.data());
      std::vector<std::string> row = {
          e->name() + (e->expert() >= 0 ? " [expert " + std::to_string(e->expert()) + "]" : ""), to_string_shape(*e),
          e->dtype(), e->file() + "@" + std::to_string(e->offset())};
      if (s.ok()) {
        const Stats st = stats_of(buf.data(), e->dtype(), e->length() / 4);
        char num[3][32];
        std::snprintf(num[0], sizeof num[0], "norm %.6g", st.norm);
        std::snprintf(num[1], sizeof num[1], "min %.6g", st.min);
        std::snprintf(num[2], sizeof num[2], "max %.6g", st.max);
        row.insert(row.end(), {num[0], num[1], num[2]});
      } else {
        ++damaged;
        row.push_back("DAMAGED: " + s.to_string());
      }
      rows.push_back(row);
    }
  }
  std::vector<size_t> width;
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
  if (damaged > 0) {
    std::fprintf(stderr, "moe-ckpt: %d damaged tensor entr%s in %s\n", damaged, damaged == 1 ? "y" : "ies",
                 dir.c_str());
    return 1;
  }
  return 0;
}

}  // namespace moe::ckpt
