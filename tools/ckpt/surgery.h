// Expert surgery on a checkpoint held in memory (tools/ckpt/ckpt_data.h): pruning experts, adding
// experts, and sparse upcycling of dense FFN layers into MoE layers. Each edits the tensors, the
// optimizer state, the recorded expert usage and the config together, so that moe-train can load the
// result (checkpoint.init_from) with the config from the new manifest.
//
// Expert-indexed tensors of MoE layer i, all kept consistent:
//   layers.<i>.moe.w_in (E, d, in_cols), layers.<i>.moe.w_out (E, h, d)  rows = experts
//   layers.<i>.moe.w_gate (d, E)                                        columns = experts
//   layers.<i>.moe.selection_bias (E)                                   entries = experts
//   and the optimizer state of the three parameters, shaped like them.
// Each function throws InvalidArgument for an option that does not fit the checkpoint (naming the
// option and the values) and CheckpointError for a checkpoint that lacks a tensor it needs; it
// appends one line per thing the user should know (a clamped top_k, ...) to `notes`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/ckpt/ckpt_data.h"

namespace moe::ckpt {

// The experts whose recorded share of a MoE layer's kept tokens is >= min_share in at least one MoE
// layer (a union over layers: E is the same for every layer, so the kept set must be too), ascending.
// InvalidArgument when the checkpoint has no expert usage recorded.
std::vector<int64_t> experts_with_usage(const CheckpointData& data, double min_share);

// Keeps the experts `keep` (global ids, ascending, distinct, in [0, E)) and renumbers them 0..E'-1
// in that order: their rows of the expert tensors, their columns of w_gate, their selection_bias
// entries, the same for the optimizer state, and their expert usage. moe.num_experts becomes E';
// moe.top_k is clamped to E' (noted).
void prune_experts(CheckpointData& data, const std::vector<int64_t>& keep, std::vector<std::string>* notes);

// Appends `count` experts E..E+count-1 to every MoE layer. from >= 0: each new expert is a copy of
// expert `from` (weights, w_gate column and selection_bias entry: a twin that splits from the
// original as training breaks the tie). from < 0 (fresh): w_in ~ N(0, model.init_std), w_out ~
// N(0, init_std / sqrt(2 n_layers)) (the scaling moe-train gives every output projection), drawn from
// counter-based streams of (seed, tensor name) so expert e's values depend only on (seed, e); a zero
// w_gate column (logit 0 for every token: neutral, learned from there) and a zero selection_bias.
// The optimizer state of the new entries is zero in both cases. moe.num_experts becomes E + count.
void add_experts(CheckpointData& data, int64_t count, int64_t from, uint64_t seed, std::vector<std::string>* notes);

// Sparse upcycling: with model.moe_every = moe_every, every layer that becomes an MoE layer and was
// a dense layer gets `experts` copies of its dense FFN (layers.<i>.ffn.w_in (d, in_cols) and
// .w_out (h, d) -> layers.<i>.moe.w_in (N, d, in_cols) and .w_out (N, h, d)), a router w_gate (d, N)
// ~ N(0, model.init_std) drawn as moe-train would draw it for run.seed = seed, and a zero
// selection_bias. MoE layers of the source stay as they are (which requires experts = their
// num_experts and their expert_hidden and activation to equal the dense FFN's); a source MoE layer
// that moe_every would make dense is an error. The config gets model.moe_every, moe.num_experts,
// moe.expert_hidden = model.dense_hidden, moe.activation = model.dense_activation, top_k clamped.
// All optimizer state is replaced by zeros for every parameter and optimizer_steps set to 0: the same
// as a fresh optimizer. New MoE layers start with 0 forward calls and zero expert usage.
void upcycle(CheckpointData& data, int64_t experts, int64_t moe_every, uint64_t seed, std::vector<std::string>* notes);

}  // namespace moe::ckpt
