// TransformerLM: the decoder-only language model of the trainer. Token embedding (+ learned
// positions) -> n_layers x [x += attn(norm1(x)); x += ffn(norm2(x))] -> final norm -> head ->
// cross-entropy, where ffn is an MoE layer (with optional shared expert) every moe_every layers and a
// dense FFN otherwise. Explicit forward and backward, one layer class per block part (core/model/*.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/model/attention_layer.h"
#include "core/model/dense_ffn.h"
#include "core/model/kv_cache.h"
#include "core/model/model_options.h"
#include "core/model/norm_layer.h"
#include "core/moe/moe_config.h"
#include "core/moe/moe_layer.h"
#include "core/parameters.h"
#include "core/tensor.h"

namespace moe {

// The model's settings: the dense parts (ModelConfig, the run configuration's `model:` section) and
// the MoE layers (MoEConfig, its `moe:` section). The MoE layers take d_model and init_std from the
// model: moe.d_model and moe.init_std are not read (moe_layer_config fills them).
struct TransformerConfig : ModelConfig {
  MoEConfig moe;

  // Throws InvalidArgument naming the first bad field, its value and what is accepted:
  // ModelConfig::validate(), then moe_layer_config().validate() when the model has MoE layers.
  void validate() const;
  // The MoE layers' settings: moe with d_model, init_std, precision, recompute_experts, seq_len and
  // vocab_size from the model.
  MoEConfig moe_layer_config() const;

  // Parameter counts of the model this config describes, without building it: every expert of
  // every MoE layer, whichever rank holds it (what TransformerLM::register_parameters registers).
  int64_t total_params() const;
  // Parameters one token's forward touches: everything except the (E - top_k) unchosen experts of
  // each MoE layer (the router, if it has one, top_k experts, shared expert, attention, norms, dense
  // FFNs, embedding tables and head all count).
  int64_t active_params_per_token() const;
};

// One process's replica of the model (with expert parallelism, its shard of each MoE layer's experts).
// Not thread-safe. Forward saves every activation its backward needs in member buffers that are
// resized, not reallocated, when the batch shape repeats: memory stays flat over a long run.
class TransformerLM {
 public:
  // Validates cfg and initialises every weight from counter-based streams of (seed, parameter name)
  // (norm gains 1, biases 0), so every rank draws identical dense weights and expert e's weights
  // wherever it lives. Each MoE layer gets its own exchange from make_exchange (empty: one process
  // holding every expert; parallel/all_to_all_exchange.h spreads them over an expert-parallel group).
  // Weights are drawn on the host and moved to `device`, where the weights, gradients, optimizer-facing
  // state and activations live: a model gets the same initial weights on every device.
  TransformerLM(const TransformerConfig& cfg, uint64_t seed, const ExpertExchangeFactory& make_exchange = {},
                Device device = Device::CPU);

  // inputs, targets (B*S) int32 on device(), sequence-major (row b*S + s is position s of sequence b); inputs in
  // [0, V), targets in [0, V) or -1 (ignored). Returns the mean cross-entropy over non-ignored targets;
  // the MoE layers' auxiliary losses are aux_loss() and z_loss(). training = false runs the MoE layers
  // with their evaluation capacity factor and without router jitter. Keeps references to inputs and
  // targets (not copies) for backward: leave them unchanged until then. Collective over the expert
  // groups when distributed (every rank must call it, with the same B).
  // positions (B*S) int32 on device(), or null: each token's position in its document (core/ops.h,
  // "Documents packed into a sequence"), which the rotary or learned positions use and to which every
  // attention layer masks; null is one document per sequence (position n % S). Kept by reference too.
  float forward(const Tensor& inputs, const Tensor& targets, bool training, const Tensor* positions = nullptr);

  // Inference with a KV cache (text generation; no backward follows it): tokens (B*n) int32 on device(),
  // in [0, V): n new tokens of each of the cache's B sequences (row b*n + i is sequence b's token at
  // position cache.length + i). Runs them through the model, attending over the cached tokens and each
  // other causally, appends their keys and values to the cache, advances cache.length by n and returns
  // their (B*n, V) logits, valid until the next forward. For every position these are the logits a
  // forward of the whole sequence up to it gives (up to float32 summation order; tests/test_model.cpp),
  // provided the MoE layers drop no token: they run as forward's evaluation (training = false), so build
  // the model with moe.eval_capacity_factor <= 0 (dropless) for generation. InvalidArgument when the cache
  // is not this model's (layers, d_model, device), when cache.length + n exceeds its capacity, or with
  // learned positions, exceeds seq_len (the table has seq_len rows; rotary positions go on beyond it).
  // Collective over the expert groups as forward is (every rank calls it with the same B and n).
  const Tensor& forward_cached(const Tensor& tokens, KVCache& cache);
  // An empty cache for forward_cached: `batch` sequences of up to `capacity` tokens, on device().
  KVCache make_kv_cache(int64_t batch, int64_t capacity) const;

  // Backward of the last forward from dloss = 1 on its cross-entropy: accumulates into every
  // registered gradient (zero them first). Each MoE layer adds the gradients of its own aux and
  // z-losses, so the gradients are those of CE + aux_loss() + z_loss(). With a tied head the
  // embedding gradient receives both the head's and the lookup's contribution. Overwrites logits().
  void backward();

  // Registers every parameter under its name (core/parameter_names.h), in the order listed there:
  // the MoE layers' w_in and w_out are Expert, everything else Dense; norm gains and biases have
  // weight_decay = false. The MoE layers' selection_bias is state, not a parameter.
  void register_parameters(ParameterRegistry& registry);

  const TransformerConfig& config() const { return cfg_; }
  Device device() const { return device_; }

  // Sums over the MoE layers of stats().aux_loss and stats().z_loss of the last forward (already
  // multiplied by their coefficients).
  double aux_loss() const;
  double z_loss() const;
  // The MoE layer of layer i, or nullptr when layer i is dense; all MoE layers in layer order.
  MoELayer* moe_layer(int64_t layer);
  const MoELayer* moe_layer(int64_t layer) const;
  std::vector<MoELayer*> moe_layers();
  AttentionLayer& attention(int64_t layer) { return blocks_.at(layer)->attn; }

  // (B*S, V) logits of the last forward; valid until backward(), which reuses the buffer.
  const Tensor& logits() const { return logits_; }

  // config().total_params() and config().active_params_per_token().
  int64_t total_params() const { return cfg_.total_params(); }
  int64_t active_params_per_token() const { return cfg_.active_params_per_token(); }
  // Model FLOPs per token of one training step (forward + backward), as in the PaLM paper's appendix B:
  //   6 * N + 12 * n_layers * d_model * seq_len,
  // N = active_params_per_token() less the tables read by lookup rather than matmul (the token
  // embedding when untied; when tied it is the head's matrix and counts once; the learned positions).
  // 6 = 2 FLOPs per multiply-add x (1 forward + 2 backward). The second term is Q K^T and P V over the
  // full S x S (not halved for the causal mask, as PaLM counts): 2 matmuls x 2 S d, x3 with backward.
  // MFU = flops_per_token * tokens/s / peak FLOP/s.
  double flops_per_token() const;

  struct Weights {
    Tensor embedding;  // (V, d)
    Tensor positions;  // (S, d), learned positions only
    Tensor head;       // (d, V), untied only
  };
  Weights weights;
  Weights grads;

 private:
  struct Block {
    Block(const TransformerConfig& cfg, int64_t layer, uint64_t seed, const ExpertExchangeFactory& make_exchange,
          Device device);
    NormLayer norm1, norm2;
    AttentionLayer attn;
    std::unique_ptr<DenseFFN> ffn;     // dense layers
    std::unique_ptr<MoELayer> moe;     // MoE layers
    std::unique_ptr<DenseFFN> shared;  // MoE layers with shared experts
    // Saved activations, (N, d) each.
    Tensor a;       // norm1(x)
    Tensor r;       // x + attn(a)
    Tensor b;       // norm2(r)
    Tensor out;     // r + ffn(b): the block's output
    Tensor shared_out;  // shared(b)
  };
  const Tensor& block_input(size_t i) const { return i == 0 ? h0_ : blocks_[i - 1]->out; }
  // The parts forward and forward_cached share, over N token rows: h0_ = embedding of ids (+ the
  // learned positions at position_ids, which only those models read); the blocks, each attention layer
  // either over whole sequences (cache null; document positions or null) or over the cache; the final
  // norm and the head into logits_.
  void embed(const Tensor& ids, const Tensor& position_ids);
  void blocks_forward(int64_t N, bool training, const Tensor& token_ids, const Tensor* positions, KVCache* cache);
  void head_forward(int64_t N);

  TransformerConfig cfg_;
  Device device_;
  std::vector<std::unique_ptr<Block>> blocks_;
  NormLayer final_norm_;

  // Saved by forward.
  bool forward_done_ = false;
  Tensor inputs_, targets_;  // (N) int32, shared storage with the caller's
  Tensor position_ids_;      // (N) int32: n % S
  Tensor cached_position_ids_;  // (N) int32: forward_cached's new tokens' positions (learned positions)
  Tensor document_positions_;  // (N) int32 the forward's positions argument (shared storage), or undefined
  // What the learned position table is read at: the document positions, else n % S.
  const Tensor& learned_position_ids() const {
    return document_positions_.defined() ? document_positions_ : position_ids_;
  }
  Tensor h0_;                // (N, d) embedding (+ positions)
  Tensor position_rows_;     // (N, d) positions[n % S]
  Tensor z_;                 // (N, d) final norm output
  // The head's product inputs as it reads them: z_ and the head's weight (the embedding when tied)
  // themselves, or with Precision::BF16 their bfloat16 copies in the *_bf16_ buffers.
  Tensor z_product_, z_bf16_;        // (N, d)
  Tensor head_product_, head_bf16_;  // (V, d) tied, (d, V) untied
  Tensor logits_;            // (N, V); the backward's dlogits
  Tensor probs_;             // (N, V)

  // Backward scratch.
  Tensor dlogits_bf16_;  // (N, V) bf16: dlogits as the head's backward reads it
  Tensor dz_;            // (N, d)
  Tensor dh_;            // (N, d) gradient of the residual stream
  Tensor dbranch_;       // (N, d) gradient of a norm output (attention or FFN input)
};

}  // namespace moe
