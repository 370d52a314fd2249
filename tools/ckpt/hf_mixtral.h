// The Hugging Face Mixtral format (transformers' MixtralForCausalLM): its config.json and its tensor
// names, and the mapping between them and our model, both ways (moe-ckpt export --format hf-mixtral,
// moe-ckpt import). docs/hf-mixtral.md lists the mapping name by name.
//
// The math the mapping preserves (tests/hf_mixtral_reference.py checks it against transformers):
//   - matrices: ours are stored (in, out) and multiply x W; Hugging Face's nn.Linear weights are
//     (out, in): every matrix is transposed, the embedding (V, d) is not.
//   - attention: our w_qkv (d, (H + 2 KV) Dh) has the columns [q (H Dh) | k (KV Dh) | v (KV Dh)],
//     head-major in each part; q_proj, k_proj, v_proj are those parts' rows.
//   - rotary: ours rotates the interleaved pairs (2i, 2i + 1) of each head, Hugging Face's
//     rotate_half the pairs (i, i + Dh/2), both by the angle s * theta^(-2i / Dh). So q and k features
//     are permuted within each head: our feature 2i is their i, our 2i + 1 their i + Dh/2 (the
//     permutation transformers' convert_llama_weights_to_hf.py applies to Meta's weights). q . k is
//     unchanged by a permutation applied to both, so the attention is the same.
//   - experts: our w_in (E, d, 2h) holds [gate | up] per expert (core/ops.h swiglu); Mixtral's
//     w2(silu(w1 x) * w3 x): w1 is the gate half, w3 the up half, w2 our w_out (E, h, d).
//   - router: our w_gate (d, E) is gate.weight (E, d) transposed; both take the softmax over all
//     experts, the top k, and renormalise the k weights to sum to 1.
//   - RMSNorm: x / sqrt(mean(x^2) + eps) * g in both; the head (d, V) is lm_head.weight (V, d).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "launch/config/train_config.h"
#include "tools/ckpt/ckpt_data.h"

namespace moe::ckpt {

// The architecture name and model_type of config.json.
inline constexpr char kMixtralArchitecture[] = "MixtralForCausalLM";
inline constexpr char kMixtralModelType[] = "mixtral";

// Throws InvalidArgument naming the first setting of cfg that Mixtral cannot express, its value and
// the value Mixtral needs ("model.norm = layernorm: Mixtral needs rmsnorm"): LayerNorm, learned
// positions, dense layers (moe_every != 1), shared experts, an expert activation other than SwiGLU,
// routing other than token choice, sigmoid scores, no renormalisation, routed scaling, routing groups,
// aux-free balancing (its selection biases change the choices).
void require_mixtral_expressible(const TrainConfig& cfg);

// Token ids config.json records; -1: unknown (written as null).
struct SpecialTokens {
  int64_t bos = -1;
  int64_t eos = -1;
};

// The config.json of cfg's model as MixtralForCausalLM (torch_dtype float32, sliding_window null).
std::string mixtral_config_json(const TrainConfig& cfg, const SpecialTokens& tokens);

// The run configuration of a Mixtral's config.json (the text of `path`): the model section and the
// moe section as Mixtral computes (dropless token choice, softmax top-k renormalised, SwiGLU,
// router_aux_loss_coef as moe.aux_loss_coeff, no z-loss), the other sections at their defaults.
// Keys absent from the file take MixtralConfig's defaults, as transformers would. Throws
// CheckpointError naming `path`, the key, its value and what is accepted for: text that is not a JSON
// object, another model_type or architecture, a missing size, hidden_act other than silu, rope_scaling,
// a sliding_window shorter than max_position_embeddings, a head_dim other than hidden_size /
// num_attention_heads, sizes our model refuses (TransformerConfig::validate's messages).
TrainConfig train_config_from_mixtral(const std::string& json_text, const std::string& path);

// One tensor of a Mixtral directory: its Hugging Face name and shape.
struct MixtralTensorSpec {
  std::string name;
  Shape shape;
};

// Every tensor a Mixtral of cfg's model holds, in the order export writes them (embedding, then each
// layer's, then the final norm and lm_head; no lm_head when the embeddings are tied).
std::vector<MixtralTensorSpec> mixtral_tensor_specs(const TrainConfig& cfg);

// Our parameters (whole tensors by name, as a checkpoint holds them: `ours(name)`) as Hugging Face's
// tensors, named and shaped as mixtral_tensor_specs(cfg) lists them. cfg must pass
// require_mixtral_expressible.
std::vector<NamedTensor> to_mixtral(const TrainConfig& cfg, const std::function<Tensor(const std::string&)>& ours);

// The inverse: Hugging Face's tensors (`theirs(name)`, shaped as mixtral_tensor_specs lists them) as
// our parameters (whole tensors, experts stacked: NamedTensor::expert set), plus each MoE layer's
// selection_bias (zeros).
std::vector<NamedTensor> from_mixtral(const TrainConfig& cfg, const std::function<Tensor(const std::string&)>& theirs);

// The permutation of one head's q or k features: our feature c is Hugging Face's feature
// hf_rotary_feature(c, Dh) (c even: c / 2; c odd: Dh / 2 + c / 2).
int64_t hf_rotary_feature(int64_t c, int64_t head_dim);

}  // namespace moe::ckpt
