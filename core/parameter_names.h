// The names of the model's parameters and of the state checkpointed beside them, spelled only here:
// the model registers its parameters under them, moe-train checkpoints them and moe-ckpt reads, edits
// and exports them. Checkpoints on disk store tensors under these names, so changing one makes every
// existing checkpoint unloadable.
//
//   embedding                                   token embedding (V, d)
//   positions                                   learned positions (S, d), learned positions only
//   layers.<i>.norm1.g, layers.<i>.norm1.b      norm gain, and bias for LayerNorm
//   layers.<i>.attn.w_qkv, layers.<i>.attn.w_out
//   layers.<i>.norm2.g, layers.<i>.norm2.b
//   layers.<i>.ffn.w_in, layers.<i>.ffn.w_out   dense layers
//   layers.<i>.moe.w_gate                       MoE layers: router (d, E)
//   layers.<i>.moe.w_in, layers.<i>.moe.w_out   experts (E, ...)
//   layers.<i>.moe.selection_bias               (E) balancing state: checkpointed, not a parameter
//   layers.<i>.shared.w_in, layers.<i>.shared.w_out   shared expert of an MoE layer
//   final_norm.g, final_norm.b
//   head                                        (d, V), untied embeddings only
//
// A layer part registers its tensors as "<prefix>.<leaf>" under the prefix its owner gives it
// ("layers.<i>.<part>", or "final_norm"). Initial values are drawn from streams named after the
// same names (core/random.h stream_id), so the names also fix what a seed draws.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace moe::names {

// Tensors of the model as a whole.
inline constexpr char kEmbedding[] = "embedding";
inline constexpr char kPositions[] = "positions";
inline constexpr char kFinalNorm[] = "final_norm";  // a prefix: the final norm's g (and b)
inline constexpr char kHead[] = "head";

// The parts of layer i, each the prefix "layers.<i>.<part>" of its tensors.
inline constexpr char kNorm1[] = "norm1";
inline constexpr char kAttn[] = "attn";
inline constexpr char kNorm2[] = "norm2";
inline constexpr char kFfn[] = "ffn";       // dense layers
inline constexpr char kMoE[] = "moe";       // MoE layers
inline constexpr char kShared[] = "shared"; // an MoE layer's shared expert

// The leaves: a part's tensors, "<prefix>.<leaf>".
inline constexpr char kGain[] = "g";        // norms
inline constexpr char kBias[] = "b";        // LayerNorm
inline constexpr char kWQkv[] = "w_qkv";    // attention
inline constexpr char kWIn[] = "w_in";      // FFNs and experts
inline constexpr char kWOut[] = "w_out";    // attention, FFNs and experts
inline constexpr char kWGate[] = "w_gate";  // the MoE router
inline constexpr char kSelectionBias[] = "selection_bias";  // the MoE layer's balancing state

// "layers.<layer>.<part>"
std::string layer_part(int64_t layer, std::string_view part);
// "<prefix>.<leaf>"
std::string tensor_name(std::string_view prefix, std::string_view leaf);
// "layers.<layer>.<part>.<leaf>"
std::string layer_tensor(int64_t layer, std::string_view part, std::string_view leaf);

// A layer tensor's name taken apart: "layers.3.moe.w_gate" is {3, "moe", "w_gate"}.
struct LayerTensorName {
  int64_t layer = -1;
  std::string part;
  std::string leaf;
};
// Whether `name` is "layers.<i>.<part>.<leaf>" (i in decimal, part without a dot, leaf not empty);
// fills *out when it is. Optimizer state ("adamw.m.layers.0.moe.w_in") and model-wide tensors are not.
bool parse_layer_tensor(std::string_view name, LayerTensorName* out);

}  // namespace moe::names
