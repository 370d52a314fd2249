// Static routing (docs/routing.md, "Hash routing" and "Table routing"): the fixed map from a token id to
// its top_k experts, seeded (hash) or read from a file (table). No router parameters; weights 1/k.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/moe/moe_config.h"

namespace moe {

// The hash map of Hash Layers (Roller et al. 2021): (vocab_size * top_k) expert ids, row v holding token
// id v's top_k distinct experts, choice 0 first. Choice j of token v is step j of a Fisher-Yates shuffle of
// [0, num_experts) driven by u_j = mix64(s ^ mix64(v * num_experts + j)) with s = stream_id(seed,
// "hash_routing"): swap position j with j + u_j mod (num_experts - j), take position j. So it is a pure
// function of (seed, v, j) (j's choice does not depend on top_k), the same on every rank whatever the
// expert-parallel layout, and each choice is uniform over the experts (balanced in expectation; the
// modulo's bias is below num_experts / 2^64). 1 <= top_k <= num_experts.
std::vector<int32_t> hash_routes(uint64_t seed, int64_t vocab_size, int64_t num_experts, int64_t top_k);

// The routing table file at `path`, as (vocab_size * top_k) expert ids (row v: token id v's experts, in
// the order listed). Format, one entry per line; '#' starts a comment, blank lines are skipped, fields are
// separated by spaces or tabs:
//   ID: E1 E2 ... Ek           token id ID (0 <= ID < vocab_size) goes to experts E1 .. Ek
//   FIRST-LAST: E1 E2 ... Ek   every token id of the inclusive range FIRST .. LAST
//   *: E1 E2 ... Ek            every token id no other line lists (at most one such line)
// Each entry lists exactly top_k distinct experts in [0, num_experts); an id may be listed once. Without a
// '*' line every id in [0, vocab_size) must be listed. Throws InvalidArgument "routing_table = PATH, line
// N: ..." naming what is wrong and what is accepted (a file that does not open or is not a regular file, a
// bad line, an id out of range or listed twice, an expert out of range or listed twice, a count other than
// top_k, ids left unlisted without a '*' line).
std::vector<int32_t> read_routing_table(const std::string& path, int64_t vocab_size, int64_t num_experts,
                                        int64_t top_k);

// The map of an MoE layer with static routing (cfg.routing hash or table; cfg.vocab_size known): hash_routes
// of `layer_seed`, or read_routing_table of cfg.routing_table.
std::vector<int32_t> static_routes(const MoEConfig& cfg, uint64_t layer_seed);

}  // namespace moe
