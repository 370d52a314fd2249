// Pruning, adding and upcycling experts in a checkpoint (tools/ckpt/surgery.h).
#include "tools/ckpt/surgery.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/available_memory.h"
#include "core/check.h"
#include "core/model/transformer.h"
#include "core/parameter_names.h"
#include "core/random.h"
#include "launch/trainer/trainer.h"
#include "optim/expert_edit.h"

namespace moe::ckpt {

namespace {

void require_experts(const NamedTensor& t, int axis, int64_t E) {
  if (t.data.rank() <= axis || t.data.dim(axis) != E)
    throw CheckpointError("tensor '" + t.name + "' has shape " + to_string(t.data.shape()) +
                          ", but the checkpoint has " + std::to_string(E) + " experts along its dimension " +
                          std::to_string(axis));
}

// The axis along which tensor t is indexed by expert, or -1 (optim/expert_edit.h).
int expert_axis(const NamedTensor& t) {
  int64_t layer = -1;
  return moe::expert_axis(t.name, &layer);
}

// Applies `edit` to every expert-indexed tensor of every MoE layer (E is the same for each).
void apply_to_every_layer(CheckpointData& data, const ExpertEdit& edit) {
  for (NamedTensor& t : data.tensors) {
    const int axis = expert_axis(t);
    if (axis < 0) continue;
    require_experts(t, axis, edit.old_experts);
    t.data = apply_expert_edit(edit, t.name, t.data);
  }
}

void clamp_top_k(TrainConfig& cfg, std::vector<std::string>* notes) {
  if (cfg.moe.top_k <= cfg.moe.num_experts) return;
  notes->push_back("moe.top_k = " + std::to_string(cfg.moe.top_k) + " is more than the " +
                   std::to_string(cfg.moe.num_experts) + " experts left; set to " +
                   std::to_string(cfg.moe.num_experts));
  cfg.moe.top_k = cfg.moe.num_experts;
}

// InvalidArgument naming `option` unless the edited checkpoint, data's tensors + experts x
// per_expert_bytes, fits twice in the available memory: the edited tensors and the copy that
// write_checkpoint_data takes are held at once. Checked before allocating anything for the experts.
void require_room_for_experts(const CheckpointData& data, const std::string& option, int64_t experts,
                              double per_expert_bytes) {
  double base_bytes = 0;
  for (const NamedTensor& t : data.tensors) base_bytes += static_cast<double>(t.data.nbytes());
  const AvailableMemory available = available_memory();
  const double need = 2 * (base_bytes + static_cast<double>(experts) * per_expert_bytes);
  if (need <= static_cast<double>(available.bytes)) return;
  const double most = std::floor((static_cast<double>(available.bytes) / 2 - base_bytes) / per_expert_bytes);
  throw InvalidArgument(option + " " + std::to_string(experts) + " does not fit in memory: the result holds " +
                        memory_size_text(need / 2) + " of tensors (" + memory_size_text(per_expert_bytes) +
                        " per expert) and writing it needs twice that, " + memory_size_text(need) + ", but only " +
                        memory_size_text(static_cast<double>(available.bytes)) + " is available (" +
                        available.source + "); at most " + std::to_string(static_cast<int64_t>(std::max(0.0, most))) +
                        " experts fit");
}

NamedTensor& need(CheckpointData& data, const std::string& name, const std::string& why) {
  NamedTensor* t = data.find(name);
  if (t == nullptr) throw CheckpointError("checkpoint '" + data.dir + "' has no tensor '" + name + "' (" + why + ")");
  return *t;
}

}  // namespace

std::vector<int64_t> experts_with_usage(const CheckpointData& data, double min_share) {
  const int64_t E = data.config.moe.num_experts;
  std::vector<bool> keep(static_cast<size_t>(E), false);
  bool any = false;
  for (const checkpoint::ExpertUsage& u : data.header.expert_usage()) {
    double total = 0;  // a double: counts near 2^63 (a crafted checkpoint) must not overflow a sum
    for (int64_t c : u.tokens()) total += static_cast<double>(c);
    if (total <= 0) continue;
    MOE_REQUIRE(u.tokens_size() == E, "checkpoint '", data.dir, "' records usage of ", u.tokens_size(),
                " experts for layer ", u.layer(), " but has ", E, " experts");
    any = true;
    for (int64_t e = 0; e < E; ++e)
      if (static_cast<double>(u.tokens(e)) / total >= min_share) keep[e] = true;
  }
  MOE_REQUIRE(any, "checkpoint '", data.dir, "' has no expert usage recorded; --min-usage needs it: use --keep IDS");
  std::vector<int64_t> out;
  for (int64_t e = 0; e < E; ++e)
    if (keep[e]) out.push_back(e);
  return out;
}

void prune_experts(CheckpointData& data, const std::vector<int64_t>& keep, std::vector<std::string>* notes) {
  const int64_t E = data.config.moe.num_experts;
  MOE_REQUIRE(transformer_config(data.config).num_moe_layers() > 0, "checkpoint '", data.dir,
              "' has no MoE layers: nothing to prune");
  MOE_REQUIRE(!keep.empty(), "no expert would be kept; at least one must be");
  for (size_t i = 0; i < keep.size(); ++i) {
    MOE_REQUIRE(keep[i] >= 0 && keep[i] < E, "expert id ", keep[i], " is out of range: the checkpoint has experts 0..",
                E - 1);
    MOE_REQUIRE(i == 0 || keep[i] > keep[i - 1], "expert ids to keep must be distinct and ascending (got ", keep[i - 1],
                " before ", keep[i], ")");
  }
  apply_to_every_layer(data, keep_experts_edit(E, keep));
  for (checkpoint::ExpertUsage& u : *data.header.mutable_expert_usage()) {
    if (u.tokens_size() != E) continue;
    std::vector<int64_t> kept;
    for (int64_t e : keep) kept.push_back(u.tokens(e));
    u.mutable_tokens()->Assign(kept.begin(), kept.end());
  }
  data.config.moe.num_experts = static_cast<int64_t>(keep.size());
  clamp_top_k(data.config, notes);
}

void add_experts(CheckpointData& data, int64_t count, int64_t from, uint64_t seed, std::vector<std::string>* notes) {
  const int64_t E = data.config.moe.num_experts;
  MOE_REQUIRE(transformer_config(data.config).num_moe_layers() > 0, "checkpoint '", data.dir,
              "' has no MoE layers to add experts to");
  MOE_REQUIRE(count >= 1, "--count ", count, " must be >= 1");
  MOE_REQUIRE(from < E, "--from ", from, " is out of range: the checkpoint has experts 0..", E - 1);
  double per_expert_bytes = 0;
  for (const NamedTensor& t : data.tensors)
    if (expert_axis(t) >= 0) per_expert_bytes += static_cast<double>(t.data.nbytes()) / static_cast<double>(E);
  require_room_for_experts(data, "--count", count, per_expert_bytes);
  ExpertEdit edit = add_experts_edit(E, count, from);
  edit.seed = seed;
  edit.init_std = static_cast<float>(data.config.model.init_std);
  edit.out_scale = 1.f / std::sqrt(2.f * static_cast<float>(data.config.model.n_layers));
  apply_to_every_layer(data, edit);
  const bool fresh = from < 0;
  for (checkpoint::ExpertUsage& u : *data.header.mutable_expert_usage())
    for (int64_t n = 0; n < count; ++n) u.add_tokens(0);
  data.config.moe.num_experts = E + count;
  notes->push_back(fresh ? "experts " + std::to_string(E) + ".." + std::to_string(E + count - 1) + " are fresh (seed " +
                               std::to_string(seed) + "), with zero router columns"
                         : "experts " + std::to_string(E) + ".." + std::to_string(E + count - 1) +
                               " are copies of expert " + std::to_string(from) + ", router column included");
}

void upcycle(CheckpointData& data, int64_t experts, int64_t moe_every, uint64_t seed, std::vector<std::string>* notes) {
  TrainConfig& cfg = data.config;
  const int64_t L = cfg.model.n_layers, d = cfg.model.d_model;
  MOE_REQUIRE(experts >= 1, "--experts ", experts, " must be >= 1");
  MOE_REQUIRE(moe_every >= 1, "--moe-every ", moe_every, " must be >= 1");
  const TransformerConfig source = transformer_config(cfg);
  TransformerConfig target = source;
  target.moe_every = moe_every;
  std::vector<int64_t> upcycled;
  bool any_source_moe = false;
  for (int64_t i = 0; i < L; ++i) {
    const bool source_moe = source.is_moe_layer(i);
    any_source_moe = any_source_moe || source_moe;
    MOE_REQUIRE(!source_moe || target.is_moe_layer(i), "layer ", i, " is an MoE layer in checkpoint '", data.dir,
                "' but --moe-every ", moe_every, " would make it dense; choose a --moe-every that divides ",
                cfg.model.moe_every);
    if (target.is_moe_layer(i) && !source_moe) upcycled.push_back(i);
  }
  MOE_REQUIRE(!upcycled.empty(), "--moe-every ", moe_every, " makes no dense layer of checkpoint '", data.dir,
              "' an MoE layer: nothing to upcycle");
  if (any_source_moe) {
    MOE_REQUIRE(experts == cfg.moe.num_experts, "--experts ", experts, " differs from the ", cfg.moe.num_experts,
                " experts of the checkpoint's MoE layers, which are kept as they are");
    MOE_REQUIRE(cfg.moe.expert_hidden == cfg.model.dense_hidden && cfg.moe.activation == cfg.model.dense_activation,
                "the checkpoint's MoE layers have expert_hidden ", cfg.moe.expert_hidden, " and activation ",
                to_string(cfg.moe.activation), " but its dense FFNs hidden ", cfg.model.dense_hidden, " and ",
                to_string(cfg.model.dense_activation), "; upcycled experts would not match them");
  }
  MOE_REQUIRE(cfg.moe.shared_experts == 0, "the config has moe.shared_experts = ", cfg.moe.shared_experts,
              "; upcycle does not create shared experts");

  {
    // Per new expert: its slice of each upcycled layer's w_in, w_out, w_gate and selection_bias, with
    // the optimizer state of each (one tensor per state slot).
    const double h = static_cast<double>(cfg.model.dense_hidden);
    const double ffn_floats = static_cast<double>(d) * (cfg.model.dense_activation == Activation::SwiGLU ? 3 : 2) * h;
    const double slots = static_cast<double>(optimizer_state_names(cfg.optim.name, "x").size());
    const double per_expert_bytes = static_cast<double>(upcycled.size()) * (ffn_floats + d + 1) * 4 * (1 + slots);
    require_room_for_experts(data, "--experts", experts, per_expert_bytes);
  }

  // moe_layer_calls and expert usage are listed per MoE layer in layer order: rebuild them.
  std::vector<uint64_t> calls;
  std::map<int64_t, checkpoint::ExpertUsage> usage;
  for (const checkpoint::ExpertUsage& u : data.header.expert_usage()) usage[u.layer()] = u;
  int64_t source_index = 0;
  const checkpoint::TrainingState& state = data.header.state();
  for (int64_t i = 0; i < L; ++i) {
    if (!target.is_moe_layer(i)) continue;
    const bool existing = source.is_moe_layer(i);
    calls.push_back(existing && source_index < state.moe_layer_calls_size() ? state.moe_layer_calls(source_index) : 0);
    if (existing) ++source_index;
    if (!existing || usage.count(i) == 0) {
      checkpoint::ExpertUsage u;
      u.set_layer(i);
      for (int64_t e = 0; e < experts; ++e) u.add_tokens(0);
      usage[i] = u;
    }
  }
  checkpoint::TrainingState* s = data.header.mutable_state();
  s->mutable_moe_layer_calls()->Assign(calls.begin(), calls.end());
  s->set_optimizer_steps(0);
  data.header.clear_expert_usage();
  for (auto& [layer, u] : usage)
    if (target.is_moe_layer(layer)) *data.header.add_expert_usage() = u;

  for (int64_t i : upcycled) {
    const std::string why = "layer " + std::to_string(i) + " is dense and is to be upcycled";
    const std::string ffn_in = names::layer_tensor(i, names::kFfn, names::kWIn);
    const std::string ffn_out = names::layer_tensor(i, names::kFfn, names::kWOut);
    const Tensor w_in = need(data, ffn_in, why).data;
    const Tensor w_out = need(data, ffn_out, why).data;
    MOE_ASSERT(w_in.rank() == 2 && w_out.rank() == 2, "dense FFN weights are matrices");
    std::vector<int64_t> copies(static_cast<size_t>(experts), 0);
    NamedTensor moe_in{names::layer_tensor(i, names::kMoE, names::kWIn),
                       gather_axis(w_in.reshape({1, w_in.dim(0), w_in.dim(1)}), 0, copies), true};
    NamedTensor moe_out{names::layer_tensor(i, names::kMoE, names::kWOut),
                        gather_axis(w_out.reshape({1, w_out.dim(0), w_out.dim(1)}), 0, copies), true};
    // The stream moe-train's MoE layer i draws its router from (core/model/transformer.cpp, moe_layer.cpp).
    Tensor gate = Tensor::empty({d, experts});
    fill_normal(gate, static_cast<float>(cfg.model.init_std),
                stream_id(stream_id(seed, names::layer_part(i, names::kMoE)), names::kWGate));
    data.remove(ffn_in);
    data.remove(ffn_out);
    data.tensors.push_back(std::move(moe_in));
    data.tensors.push_back(std::move(moe_out));
    data.tensors.push_back({names::layer_tensor(i, names::kMoE, names::kWGate), gate, false});
    data.tensors.push_back(
        {names::layer_tensor(i, names::kMoE, names::kSelectionBias), Tensor::zeros({experts}), false});
  }

  // A fresh optimizer: zero state for every parameter.
  std::erase_if(data.tensors, [](const NamedTensor& t) { return is_optimizer_state(t.name); });
  std::vector<NamedTensor> state_tensors;
  for (const NamedTensor& t : data.tensors)
    if (is_parameter(t.name))
      for (const std::string& name : optimizer_state_names(cfg.optim.name, t.name))
        state_tensors.push_back({name, Tensor::zeros(t.data.shape(), t.data.dtype()), t.expert});
  for (NamedTensor& t : state_tensors) data.tensors.push_back(std::move(t));
  data.sort();

  cfg.model.moe_every = moe_every;
  cfg.moe.num_experts = experts;
  cfg.moe.expert_hidden = cfg.model.dense_hidden;
  cfg.moe.activation = cfg.model.dense_activation;
  clamp_top_k(cfg, notes);
  std::string layers;
  for (int64_t i : upcycled) layers += (layers.empty() ? "" : ", ") + std::to_string(i);
  notes->push_back("upcycled layer" + std::string(upcycled.size() > 1 ? "s " : " ") + layers + " into " +
                   std::to_string(experts) + " copies of the dense FFN each, router seed " + std::to_string(seed) +
                   "; optimizer state reset (optimizer_steps 0)");
}

}  // namespace moe::ckpt
