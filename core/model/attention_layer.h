// AttentionLayer: causal multi-head (or grouped-query) self-attention with a fused QKV projection, optional rotary
// position embedding and an output projection (no biases), forward and backward side by side; the two
// projections in float32 or with bfloat16 inputs (mixed precision).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/model/model_options.h"
#include "core/parameters.h"
#include "core/tensor.h"

namespace moe {

struct AttentionConfig {
  int64_t d_model = 0;
  int64_t n_heads = 0;          // head_dim = d_model / n_heads
  int64_t n_kv_heads = 0;       // key/value heads, dividing n_heads; 0 = n_heads
  int64_t seq_len = 0;          // S: inputs hold B whole sequences of S tokens, sequence-major
  bool rotary = true;           // rotate q and k by position (RoPE)
  float rope_theta = 10000.f;
  float init_std = 0.02f;       // w_qkv ~ N(0, init_std)
  float out_init_std = 0.02f;   // w_out ~ N(0, out_init_std); the model scales it by 1/sqrt(2 n_layers)
  bool recompute = false;       // the backward redoes the projections (AttentionProjections) from x
  // Of the two projections and the attention's products; bf16: bfloat16 inputs (x, the attention
  // output, the weights' copies, the output gradients, q, k and v), float32 outputs. Rotary, the
  // attention's scores and softmax compute in float32 always.
  Precision precision = Precision::FP32;

  // Throws InvalidArgument naming the first bad field: sizes >= 1, n_heads divides d_model, an even
  // head_dim with rotary, n_kv_heads dividing n_heads, finite theta > 0, finite init stds > 0.
  void validate() const;
  int64_t head_dim() const { return d_model / n_heads; }
  int64_t kv_heads() const { return n_kv_heads == 0 ? n_heads : n_kv_heads; }
  int64_t qkv_width() const { return d_model + 2 * kv_heads() * head_dim(); }  // columns of w_qkv
};

// The projections' outputs that the attention reads: what model.recompute = attention stops keeping.
struct AttentionProjections {
  Tensor qkv;  // (N, qkv_width) x W_qkv
  Tensor q;    // (N, d) after rotary (when on)
  Tensor k;    // (N, d) after rotary (when on), each key head repeated for the query heads it serves
  Tensor v;    // (N, d) likewise
  // q, k, v as the attention reads them: the float32 tensors above, or with Precision::BF16 their
  // bfloat16 copies, held in the *_bf16 buffers.
  Tensor q_in, k_in, v_in;
  Tensor q_bf16, k_bf16, v_bf16;
};

struct AttentionWeights {
  // (d, qkv_width): columns [q (H Dh) | k (KV Dh) | v (KV Dh)], head h at columns [h Dh, (h+1) Dh) of
  // each part; query head h reads key/value head h / (H / KV).
  Tensor w_qkv;
  Tensor w_out;  // (d, d)
};

// Not thread-safe: forward saves what backward reads. Activation buffers are members, resized (not
// reallocated) when the token count stays the same, so memory stays flat over a run.
class AttentionLayer {
 public:
  // Validates cfg; draws w_qkv and w_out from the counter-based streams (seed, "<name>.w_qkv") and
  // (seed, "<name>.w_out"), so every rank with the same seed and name gets the same weights. Weights,
  // gradients and activations live on `device`; forward takes x there.
  AttentionLayer(const AttentionConfig& cfg, uint64_t seed, const std::string& name, Device device = Device::CPU);

  // x (B*S, d) -> y (B*S, d), overwritten; y must not be x. The rows are B sequences of S = seq_len
  // tokens, row b*S + s being position s of sequence b. Keeps a reference to x for backward: leave
  // it unchanged until then. positions (B*S) int32 or null: each token's position in its document
  // (core/ops.h): rotary rotates by it and the attention masks to each token's own document; kept by
  // reference for backward too.
  void forward(Tensor& y, const Tensor& x, const Tensor* positions = nullptr);
  // dy (B*S, d): accumulates dx (B*S, d) += dL/dx and the weight gradients. dx must not be dy.
  void backward(Tensor& dx, const Tensor& dy);

  // Inference with a KV cache; no backward may follow (it overwrites what forward saved). x (B*n, d): n new tokens of each of the B sequences of k_cache, v_cache
  // (B, T, d), at positions past .. past + n - 1, past + n <= T. Projects them as forward does (rotary at
  // those positions), writes their keys and values into rows [past, past + n) of the caches, attends each
  // new query over its sequence's rows [0, its position] (cached_attention_forward) and writes y (B*n, d).
  // The attention reads float32 q, k and v in every precision (the projections take bfloat16 inputs
  // with Precision::BF16, as in forward).
  void forward_cached(Tensor& y, const Tensor& x, Tensor& k_cache, Tensor& v_cache, int64_t past);

  // Adds "<prefix>.w_qkv" and "<prefix>.w_out" (Dense, with weight decay).
  void register_parameters(ParameterRegistry& registry, const std::string& prefix);

  // With cfg.recompute: where the projections go, which the backward recomputes, so every attention
  // layer of a model can share one (TransformerLM does). Asserts the flag.
  void share_projections(std::shared_ptr<AttentionProjections> scratch);

  const AttentionConfig& config() const { return cfg_; }
  int64_t num_params() const { return weights.w_qkv.numel() + weights.w_out.numel(); }
  // Elements of the tensors forward saves for backward (x is the caller's in fp32; bf16 keeps its
  // bfloat16 copy): O(N (d + H)), no (B, H, S, S) probabilities, which backward recomputes.
  int64_t saved_numel() const;

  AttentionWeights weights;
  AttentionWeights grads;

 private:
  // Row indices of q, k and v (N H head rows each) in qkv viewed as (N (H + 2 KV), Dh) head rows.
  void make_split_indices(int64_t N);
  // *proj_ from x_ and w_qkv_: the QKV product, the split and rotary, x_ being sequences of seq_len rows
  // whose positions are position_offset plus the document positions (or plus the row's index in its sequence).
  void project(int64_t seq_len, const Tensor* positions, int64_t position_offset);

  AttentionConfig cfg_;

  // Saved by forward for backward. The projections' inputs as they read them: the float32 tensors
  // themselves (sharing storage), or with Precision::BF16 their bfloat16 copies in the *_bf16_ buffers,
  // the weights' made anew each forward (the optimizer changes the float32 masters every step).
  Tensor x_;      // (N, d) the input
  Tensor positions_;  // (N) int32 the forward's document positions (shared storage), or undefined
  const Tensor* positions() const { return positions_.defined() ? &positions_ : nullptr; }
  Tensor x_bf16_;
  Tensor w_qkv_, w_qkv_bf16_;  // (d, qkv_width)
  Tensor w_out_, w_out_bf16_;  // (d, d)
  std::shared_ptr<AttentionProjections> proj_ = std::make_shared<AttentionProjections>();
  Tensor lse_;    // (B, H, S) log-sum-exp of each query's scores
  Tensor attn_;   // (N, d) attention output before the projection, float32 (the attention's backward reads it)
  Tensor attn_product_, attn_bf16_;  // (N, d) attn_ as the output projection reads it
  Tensor index_q_, index_k_, index_v_;  // (N H) int32

  // Backward scratch.
  Tensor d_attn_;  // (N, d)
  Tensor dq_;      // (N, d) gradient w.r.t. the rotated q
  Tensor dk_;      // (N, d)
  Tensor dv_;      // (N, d)
  Tensor d_pre_;   // (N, d) gradient w.r.t. q or k before rotary
  Tensor dqkv_;    // (N, qkv_width)
  Tensor dy_bf16_, dqkv_bf16_;  // bf16: the output gradients the projections' backward reads
};

}  // namespace moe
