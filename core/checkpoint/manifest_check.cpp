// The checks of a checkpoint's metadata (core/checkpoint/manifest_check.h).
#include "core/checkpoint/manifest_check.h"

#include <limits>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "core/checkpoint/checkpoint.h"

namespace moe {

namespace {

constexpr uint64_t kAlign = 64;
constexpr int kMaxDims = 8;
constexpr uint64_t kMaxBytes = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// a * b, false when it exceeds `limit`.
bool mul_within(uint64_t a, uint64_t b, uint64_t limit, uint64_t* out) {
  if (a != 0 && b > limit / a) return false;
  *out = a * b;
  return true;
}

// The first of the checks to fail, as one Corruption naming the manifest and the field.
class Problems {
 public:
  explicit Problems(const std::string& path) : prefix_("'" + path + "': ") {}
  // Records `what` unless `ok` or a problem was recorded already; returns ok.
  bool require(bool ok, const std::string& what) {
    if (!ok && first_.empty()) first_ = what;
    return ok;
  }
  bool any() const { return !first_.empty(); }
  Status status() const { return any() ? Status::corruption(prefix_ + first_) : Status::ok_status(); }

 private:
  std::string prefix_, first_;
};

std::string str(int64_t v) { return std::to_string(v); }

std::string entry_name(int i, const checkpoint::TensorEntry& e) {
  return "tensors[" + std::to_string(i) + "] ('" + e.name() + "'" +
         (e.expert() >= 0 ? ", expert " + str(e.expert()) : std::string()) + ")";
}

// The entry checks that need no other entry; `bytes` gets its byte size.
bool check_entry(Problems& p, int i, const checkpoint::TensorEntry& e, int64_t num_experts,
                 const std::map<std::string, int>& shard_of_file, uint64_t* bytes) {
  const std::string at = entry_name(i, e);
  if (!p.require(!e.name().empty(), "tensors[" + std::to_string(i) + "].name is empty") ||
      !p.require(e.expert() >= -1 && e.expert() < num_experts,
                 at + ".expert = " + str(e.expert()) + " is outside -1 (a whole tensor) .. layout.num_experts - 1 = " +
                     str(num_experts - 1)) ||
      !p.require(e.dtype() == "float32" || e.dtype() == "int32",
                 at + ".dtype = '" + e.dtype() + "'; accepted: float32, int32") ||
      !p.require(shard_of_file.count(e.file()) == 1, at + ".file = '" + e.file() + "' is not a shard of the manifest") ||
      !p.require(e.shape_size() <= kMaxDims,
                 at + ".shape has " + std::to_string(e.shape_size()) + " dimensions; at most " +
                     std::to_string(kMaxDims)))
    return false;
  // Every partial product must fit too (code strides over the dimensions): zeros count as 1 here.
  uint64_t bound = 0, numel = 1;
  if (!p.require(mul_within(4, static_cast<uint64_t>(e.expert() >= 0 ? num_experts : 1), kMaxBytes, &bound),
                 at + ": layout.num_experts = " + str(num_experts) + " slices of 4-byte elements overflow 63 bits"))
    return false;
  for (int d = 0; d < e.shape_size(); ++d) {
    const int64_t n = e.shape(d);
    if (!p.require(n >= 0, at + ".shape[" + std::to_string(d) + "] = " + str(n) + " is negative") ||
        !p.require(mul_within(bound, n == 0 ? 1 : static_cast<uint64_t>(n), kMaxBytes, &bound),
                   at + ".shape " + to_string_shape(e) + " is too large: its byte size" +
                       (e.expert() >= 0 ? " times layout.num_experts" : "") + " overflows 63 bits"))
      return false;
    numel *= static_cast<uint64_t>(n);
  }
  *bytes = numel * 4;
  return p.require(e.length() == *bytes, at + ".length = " + std::to_string(e.length()) + " but its shape " +
                                             to_string_shape(e) + " of 4-byte elements has " +
                                             std::to_string(*bytes) + " bytes");
}

}  // namespace

Status check_manifest(const checkpoint::Manifest& m, uint32_t version, const std::string& path) {
  Problems p(path);
  const checkpoint::Layout& l = m.layout();
  const checkpoint::TrainingState& s = m.state();
  const int64_t E = l.num_experts();
  p.require(m.format_version() == version, "format_version = " + std::to_string(m.format_version()) +
                                               " differs from the file's version " + std::to_string(version));
  p.require(!m.run_id().empty(), "run_id is empty");
  p.require(m.step() >= 0, "step = " + str(m.step()) + " is negative");
  p.require(l.world_size() >= 1, "layout.world_size = " + str(l.world_size()) + " must be >= 1");
  p.require(l.ep() >= 1 && l.world_size() % std::max(l.ep(), 1) == 0,
            "layout.ep = " + str(l.ep()) + " must be >= 1 and divide layout.world_size = " + str(l.world_size()));
  p.require(E >= 1 && E % std::max(l.ep(), 1) == 0,
            "layout.num_experts = " + str(E) + " must be >= 1 and divisible by layout.ep = " + str(l.ep()));
  p.require(l.experts_per_rank() == E / std::max(l.ep(), 1),
            "layout.experts_per_rank = " + str(l.experts_per_rank()) + " but num_experts / ep = " +
                str(E / std::max(l.ep(), 1)));
  if (p.any()) return p.status();

  p.require(m.shards_size() == l.world_size(), "has " + std::to_string(m.shards_size()) +
                                                   " shards but layout.world_size = " + str(l.world_size()));
  p.require(m.rank_states_size() == l.world_size(),
            "has " + std::to_string(m.rank_states_size()) + " rank_states (per-rank state) but layout.world_size = " +
                str(l.world_size()));
  std::map<std::string, int> shard_of_file;
  uint64_t total = 0;
  for (int r = 0; r < m.shards_size() && !p.any(); ++r) {
    const checkpoint::ShardInfo& sh = m.shards(r);
    const std::string at = "shards[" + std::to_string(r) + "]";
    p.require(sh.rank() == r, at + ".rank = " + str(sh.rank()) + "; shards are listed in rank order");
    p.require(sh.file() == checkpoint_shard_file(r, "bin"),
              at + ".file = '" + sh.file() + "'; rank " + std::to_string(r) + "'s is '" +
                  checkpoint_shard_file(r, "bin") + "'");
    p.require(sh.bytes() <= kMaxBytes - total, at + ".bytes = " + std::to_string(sh.bytes()) +
                                                   ": the shards' sizes add up past 2^63 bytes");
    total += sh.bytes();
    shard_of_file[sh.file()] = r;
  }
  for (int r = 0; r < m.rank_states_size() && !p.any(); ++r)
    p.require(m.rank_states(r).rank() == r, "rank_states[" + std::to_string(r) + "].rank = " +
                                                str(m.rank_states(r).rank()) + "; they are listed in rank order");
  if (p.any()) return p.status();

  p.require(s.optimizer_steps() >= 0 && s.optimizer_steps() <= m.step(),
            "state.optimizer_steps = " + str(s.optimizer_steps()) + " is outside 0 .. step = " + str(m.step()));
  p.require(s.skipped_steps() >= 0 && s.skipped_steps() <= m.step(),
            "state.skipped_steps = " + str(s.skipped_steps()) + " is outside 0 .. step = " + str(m.step()));
  p.require(s.consecutive_nonfinite() >= 0 && s.consecutive_nonfinite() <= s.skipped_steps(),
            "state.consecutive_nonfinite = " + str(s.consecutive_nonfinite()) +
                " is outside 0 .. state.skipped_steps = " + str(s.skipped_steps()));
  p.require(m.expert_usage_size() == s.moe_layer_calls_size(),
            "has " + std::to_string(m.expert_usage_size()) + " expert_usage entries but " +
                std::to_string(s.moe_layer_calls_size()) + " MoE layers (state.moe_layer_calls); one per MoE layer");
  for (int u = 0; u < m.expert_usage_size() && !p.any(); ++u) {
    const checkpoint::ExpertUsage& usage = m.expert_usage(u);
    const std::string at = "expert_usage[" + std::to_string(u) + "]";
    p.require(usage.layer() >= 0 && (u == 0 || usage.layer() > m.expert_usage(u - 1).layer()),
              at + ".layer = " + str(usage.layer()) + "; layers are >= 0 and ascending");
    p.require(usage.tokens_size() == E, at + ".tokens has " + std::to_string(usage.tokens_size()) +
                                            " counts but layout.num_experts = " + str(E));
    // 2^53 tokens is beyond any run, and leaves the counters room to grow without overflowing.
    constexpr int64_t kMaxCount = int64_t{1} << 53;
    for (int64_t t : usage.tokens())
      p.require(t >= 0 && t <= kMaxCount, at + ".tokens has the count " + str(t) + "; accepted: 0 to 2^53");
  }
  if (p.any()) return p.status();

  // Entries: each alone, then their places in the files, then how they fit together by name.
  std::vector<uint64_t> end(static_cast<size_t>(m.shards_size()), 0);
  std::set<std::pair<std::string, int64_t>> seen;
  struct Sliced {
    int first = -1;  // index of the first entry of the name
    int64_t slices = 0;
  };
  std::map<std::string, Sliced> by_name;
  for (int i = 0; i < m.tensors_size(); ++i) {
    const checkpoint::TensorEntry& e = m.tensors(i);
    uint64_t bytes = 0;
    if (!check_entry(p, i, e, E, shard_of_file, &bytes)) return p.status();
    const std::string at = entry_name(i, e);
    const int r = shard_of_file.at(e.file());
    const uint64_t file_bytes = m.shards(r).bytes();
    const uint64_t offset = end[r] + (kAlign - end[r] % kAlign) % kAlign;  // end[r] <= file_bytes < 2^63
    if (!p.require(e.offset() == offset, at + ".offset = " + std::to_string(e.offset()) + " but the entry before it in '" +
                                             e.file() + "' ends at " + std::to_string(end[r]) +
                                             ", so it starts at " + std::to_string(offset)) ||
        !p.require(offset <= file_bytes && bytes <= file_bytes - offset,
                   at + " (offset " + std::to_string(offset) + ", length " + std::to_string(bytes) +
                       ") lies outside its file '" + e.file() + "' of " + std::to_string(file_bytes) + " bytes") ||
        !p.require(seen.insert({e.name(), e.expert()}).second, at + " appears twice"))
      return p.status();
    end[r] = offset + bytes;
    Sliced& n = by_name[e.name()];
    if (n.first < 0) {
      n.first = i;
    } else {
      const checkpoint::TensorEntry& f = m.tensors(n.first);
      if (!p.require(f.expert() >= 0 && e.expert() >= 0,
                     at + " repeats " + entry_name(n.first, f) + (f.expert() >= 0 || e.expert() >= 0
                                                                      ? " (whole and as expert slices)" : "")) ||
          !p.require(e.dtype() == f.dtype() && to_string_shape(e) == to_string_shape(f),
                     at + " is " + e.dtype() + " " + to_string_shape(e) + " but " + entry_name(n.first, f) + " is " +
                         f.dtype() + " " + to_string_shape(f)))
        return p.status();
    }
    if (e.expert() >= 0) ++n.slices;
  }
  for (int r = 0; r < m.shards_size(); ++r)
    if (!p.require(end[r] == m.shards(r).bytes(), "shards[" + std::to_string(r) + "].bytes = " +
                                                      std::to_string(m.shards(r).bytes()) + " but its last entry ends at " +
                                                      std::to_string(end[r])))
      return p.status();
  for (const auto& [name, n] : by_name)
    if (!p.require(n.slices == 0 || n.slices == E, "tensor '" + name + "' has " + str(n.slices) +
                                                       " expert slices but layout.num_experts = " + str(E) +
                                                       "; an expert tensor has one per expert"))
      break;
  return p.status();
}

Status check_shard_index(const checkpoint::ShardIndex& index, const std::string& path,
                         const checkpoint::Manifest& m, const std::string& manifest_path, int rank) {
  const std::string file = "'" + path + "'";
  if (index.run_id() != m.run_id() || index.step() != m.step())
    return Status::corruption(file + " belongs to run " + index.run_id() + " step " + str(index.step()) + ", but '" +
                              manifest_path + "' to run " + m.run_id() + " step " + str(m.step()) +
                              ": the manifest is from another run or save");
  const checkpoint::ShardInfo& shard = m.shards(rank);
  const std::string differs = file + " disagrees with '" + manifest_path + "': ";
  if (index.rank() != rank) return Status::corruption(differs + "rank = " + str(index.rank()) + ", expected " + str(rank));
  if (index.file() != shard.file() || index.file_bytes() != shard.bytes())
    return Status::corruption(differs + "it describes '" + index.file() + "' of " + std::to_string(index.file_bytes()) +
                              " bytes (file, file_bytes), the manifest '" + shard.file() + "' of " +
                              std::to_string(shard.bytes()));
  int k = 0;
  for (const checkpoint::TensorEntry& e : m.tensors()) {
    if (e.file() != shard.file()) continue;
    if (k >= index.tensors_size() || index.tensors(k).SerializeAsString() != e.SerializeAsString())
      return Status::corruption(differs + "tensors[" + std::to_string(k) + "] is not the manifest's entry for '" +
                                e.name() + "'" + (e.expert() >= 0 ? " (expert " + str(e.expert()) + ")" : ""));
    ++k;
  }
  if (k != index.tensors_size())
    return Status::corruption(differs + "it has " + std::to_string(index.tensors_size()) +
                              " tensors, the manifest " + std::to_string(k) + " in '" + shard.file() + "'");
  if (index.state().SerializeAsString() != m.rank_states(rank).SerializeAsString())
    return Status::corruption(differs + "state differs from the manifest's rank_states[" + str(rank) + "]");
  return Status::ok_status();
}

}  // namespace moe
