// The settings of the dense parts of the model: the keys of the run configuration's `model:` section,
// named as it spells them, with their defaults (launch/config/train_config.cpp binds each key to its
// field here), and the choices they take (normalisation, position encoding).
#pragma once

#include <cstdint>

#include "core/moe/moe_config.h"
#include "core/value_range.h"

namespace moe {

enum class NormKind {
  RMSNorm,    // y = x / rms(x) * g (Zhang & Sennrich 2019; LLaMA)
  LayerNorm,  // y = (x - mean) / std * g + b (GPT-2)
};

// What the backward recomputes instead of keeping from the forward: memory for a second forward's work.
enum class Recompute {
  None,       // every activation the backward reads is kept
  Experts,    // each MoE layer's expert FFN activations (pre-activation and activation, (M, 3h) for SwiGLU)
              // are recomputed from the expert input rows, in one scratch shared by the layers
  Attention,  // each attention layer keeps its input, output and log-sum-exp only; the backward redoes
              // the QKV product, the split and rotary
  All,        // both
};

enum class PositionKind {
  Rotary,   // q and k rotated by position in every attention layer (RoFormer; LLaMA)
  Learned,  // a learned (seq_len, d_model) table added to the token embedding (GPT-2)
};

struct ModelConfig {
  int64_t vocab_size = 256;     // V: tokens 0 .. V - 1
  int64_t d_model = 128;        // d
  int64_t n_layers = 4;         // L
  int64_t n_heads = 4;          // H, dividing d
  int64_t n_kv_heads = 0;       // KV: key/value heads, dividing H (grouped-query attention, Ainslie et al.
                                // 2023: each group of H / KV query heads shares one); 0 = H (multi-head)
  int64_t seq_len = 128;        // S: every batch is B whole sequences of S tokens
  NormKind norm = NormKind::RMSNorm;
  PositionKind positions = PositionKind::Rotary;
  bool tie_embeddings = true;   // logits = x E^T with the token embedding E instead of a head
  int64_t moe_every = 2;        // layer i (0-based) is MoE when (i + 1) % moe_every == 0
  int64_t dense_hidden = 512;   // hidden size of the dense layers' FFN
  Activation dense_activation = Activation::SwiGLU;
  float init_std = 0.02f;       // N(0, init_std) for every matrix; output projections (w_out of
                                // attention, FFNs and experts) get init_std / sqrt(2 n_layers) (GPT-2)
  Precision precision = Precision::FP32;  // of the matrix products (core/moe/moe_config.h)
  Recompute recompute = Recompute::None;
  bool recomputes_experts() const { return recompute == Recompute::Experts || recompute == Recompute::All; }
  bool recomputes_attention() const { return recompute == Recompute::Attention || recompute == Recompute::All; }
  float norm_eps = 1e-5f;        // added to the mean square (RMSNorm) or variance (LayerNorm)
  float rope_theta = 10000.f;    // rotary base: pair i of a head turns by position * theta^(-2i / Dh)

  // The accepted range of each number above: validate() checks them, the run configuration's schema
  // quotes them. vocab_size is bounded by the int32 token ids.
  static constexpr Range kVocabSizeRange = closed(2, 2147483647);
  static constexpr Range kDModelRange = at_least(1);  // and divisible by n_heads
  static constexpr Range kNLayersRange = at_least(1);
  static constexpr Range kNHeadsRange = at_least(1);
  static constexpr Range kNKvHeadsRange = at_least(0);  // and dividing n_heads
  static constexpr Range kNormEpsRange = at_least(0);
  static constexpr Range kRopeThetaRange = above(0);
  static constexpr Range kSeqLenRange = at_least(2);
  static constexpr Range kMoeEveryRange = at_least(1);
  static constexpr Range kDenseHiddenRange = at_least(1);
  static constexpr Range kInitStdRange = above(0);

  // Throws InvalidArgument naming the first bad field as the run configuration spells its key
  // ("d_model = 130 ..."), its value and what is accepted: each number's range, d_model divisible by
  // n_heads, n_kv_heads dividing n_heads, an even head dim for rotary positions.
  void validate() const;
  int64_t head_dim() const { return d_model / n_heads; }
  int64_t kv_heads() const { return n_kv_heads == 0 ? n_heads : n_kv_heads; }
  int64_t qkv_width() const { return d_model + 2 * kv_heads() * head_dim(); }  // columns of w_qkv
  bool is_moe_layer(int64_t layer) const { return (layer + 1) % moe_every == 0; }
  int64_t num_moe_layers() const { return n_layers / moe_every; }
  bool operator==(const ModelConfig&) const = default;
};

}  // namespace moe
