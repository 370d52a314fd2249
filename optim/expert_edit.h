// Changing the set of experts of an MoE layer: which old expert each new one comes from (kept,
// copied, split with a perturbation, or fresh), applied to the layer's full tensors (every expert, in
// global id order). The one implementation behind moe-train's expert schedule (moe.schedule) and
// moe-ckpt's prune-experts / add-experts.
//
// Expert-indexed tensors of MoE layer i (core/parameter_names.h), edited alike:
//   layers.<i>.moe.w_in (E, d, in_cols), layers.<i>.moe.w_out (E, h, d)  rows = experts
//   layers.<i>.moe.w_gate (d, E)                                        columns = experts
//   layers.<i>.moe.selection_bias (E)                                   entries = experts
//   and the optimizer state of the three parameters ("adamw.m.<name>", ...), shaped like them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

// Where one expert of the edited layer comes from.
struct NewExpert {
  int64_t from = -1;        // the old expert whose slices it takes; -1: a fresh expert
  float noise = 0;          // > 0 (a split's copy): each w_in and w_out entry times 1 + noise * N(0, 1)
  bool copy_state = true;   // optimizer state copied from `from`; false (or fresh): zeros

  // Whether it is old expert `from` itself, carried over unchanged (its usage counts too), rather
  // than a new expert (fresh, a copy, a split's twin).
  bool kept() const { return from >= 0 && copy_state && noise == 0; }
};

// An edit of one MoE layer's experts: old_experts experts in, experts.size() out, new expert j made
// as experts[j] says. A fresh expert gets w_in ~ N(0, init_std), w_out ~ N(0, init_std * out_scale)
// (moe-train scales every output projection by 1 / sqrt(2 n_layers)), drawn from counter-based
// streams of (seed, tensor name) at new expert j's position, a zero w_gate column (logit 0 for
// every token: neutral, learned from there) and a zero selection_bias entry. A split's noise is
// drawn from streams of (seed, "split." + tensor name), also by position.
struct ExpertEdit {
  int64_t old_experts = 0;
  std::vector<NewExpert> experts;
  uint64_t seed = 0;
  float init_std = 0.02f;
  float out_scale = 1.0f;

  int64_t new_experts() const { return static_cast<int64_t>(experts.size()); }
};

// Keeps the old experts `keep` (distinct, in [0, E); asserted) and renumbers them 0..E'-1 in that
// order, optimizer state included.
ExpertEdit keep_experts_edit(int64_t old_experts, const std::vector<int64_t>& keep);
// Appends `count` experts: copies of old expert `from` (weights, router column and selection_bias
// entry: a twin, with zero optimizer state), or fresh ones for from < 0.
ExpertEdit add_experts_edit(int64_t old_experts, int64_t count, int64_t from);
// Appends a copy of each old expert in `ids` (in that order) whose weights are perturbed by `noise`
// (> 0); router column, selection_bias entry and optimizer state copied, so the original continues
// exactly and its twin drifts apart from it.
ExpertEdit split_experts_edit(int64_t old_experts, const std::vector<int64_t>& ids, float noise);

// The axis along which tensor `name` (a parameter, its optimizer state or a selection_bias) is indexed
// by expert, with its MoE layer in *layer; -1 for a tensor that is not (then *layer is untouched).
int expert_axis(const std::string& name, int64_t* layer);

// Tensor `name` of the layer the edit is for, full (old_experts along expert_axis(name); asserted;
// CPU, float32), edited: new_experts() along that axis.
Tensor apply_expert_edit(const ExpertEdit& edit, const std::string& name, const Tensor& full);

// A copy of t (CPU, 4-byte elements) whose index j along `axis` is t's index ids[j], or zeros where
// ids[j] < 0.
Tensor gather_axis(const Tensor& t, int axis, const std::vector<int64_t>& ids);

}  // namespace moe
