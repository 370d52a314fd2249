// TransformerLM (core/model/transformer.h): the layers wired into a decoder-only language model,
// forward and backward, and its parameter and FLOP counts.
#include "core/model/transformer.h"

#include <climits>
#include <cmath>
#include <string>

#include "core/check.h"
#include "core/ops.h"
#include "core/optim_ops.h"
#include "core/parameter_names.h"
#include "core/random.h"

namespace moe {

namespace {

// Parameters of a NormLayer of width d.
int64_t norm_params(const TransformerConfig& cfg) {
  return cfg.norm == NormKind::LayerNorm ? 2 * cfg.d_model : cfg.d_model;
}

int64_t ffn_params(int64_t d, int64_t hidden, Activation activation) {
  return d * (activation == Activation::SwiGLU ? 2 * hidden : hidden) + hidden * d;
}

// Parameters of the model with `experts_per_moe_layer` experts counted in each MoE layer.
int64_t count_params(const TransformerConfig& cfg, int64_t experts_per_moe_layer) {
  const int64_t V = cfg.vocab_size, d = cfg.d_model;
  int64_t n = V * d;                                        // embedding
  if (cfg.positions == PositionKind::Learned) n += cfg.seq_len * d;
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    n += 2 * norm_params(cfg) + d * cfg.qkv_width() + d * d;  // norms, w_qkv, w_out
    if (cfg.is_moe_layer(i)) {
      const MoEConfig& m = cfg.moe;
      if (!is_static(m.routing)) n += d * m.num_experts;   // router (static routing has none)
      n += experts_per_moe_layer * ffn_params(d, m.expert_hidden, m.activation);
      if (m.shared_experts > 0) n += ffn_params(d, m.shared_hidden(), m.activation);
    } else {
      n += ffn_params(d, cfg.dense_hidden, cfg.dense_activation);
    }
  }
  n += norm_params(cfg);                                    // final norm
  if (!cfg.tie_embeddings) n += d * V;                      // head
  return n;
}

}  // namespace

// ---- config ----

void TransformerConfig::validate() const {
  ModelConfig::validate();
  if (num_moe_layers() > 0) moe_layer_config().validate();
}

MoEConfig TransformerConfig::moe_layer_config() const {
  MoEConfig m = moe;
  m.d_model = d_model;
  m.init_std = init_std;
  m.precision = precision;
  m.recompute_experts = recomputes_experts();
  m.seq_len = seq_len;
  m.vocab_size = vocab_size;
  return m;
}

int64_t TransformerConfig::total_params() const { return count_params(*this, moe.num_experts); }

int64_t TransformerConfig::active_params_per_token() const { return count_params(*this, moe.top_k); }

// ---- construction ----

TransformerLM::Block::Block(const TransformerConfig& cfg, int64_t layer, uint64_t seed,
                            const ExpertExchangeFactory& make_exchange, Device device)
    : norm1(cfg.norm, cfg.d_model, cfg.norm_eps, device),
      norm2(cfg.norm, cfg.d_model, cfg.norm_eps, device),
      attn(
          [&] {
            AttentionConfig ac;
            ac.d_model = cfg.d_model;
            ac.n_heads = cfg.n_heads;
            ac.n_kv_heads = cfg.kv_heads();
            ac.seq_len = cfg.seq_len;
            ac.rotary = cfg.positions == PositionKind::Rotary;
            ac.rope_theta = cfg.rope_theta;
            ac.init_std = cfg.init_std;
            ac.out_init_std = cfg.init_std / std::sqrt(2.f * static_cast<float>(cfg.n_layers));
            ac.recompute = cfg.recomputes_attention();
            ac.precision = cfg.precision;
            return ac;
          }(),
          seed, names::layer_part(layer, names::kAttn), device) {
  const float out_scale = 1.f / std::sqrt(2.f * static_cast<float>(cfg.n_layers));
  if (!cfg.is_moe_layer(layer)) {
    DenseFFNConfig f;
    f.d_model = cfg.d_model;
    f.hidden = cfg.dense_hidden;
    f.activation = cfg.dense_activation;
    f.init_std = cfg.init_std;
    f.out_init_std = cfg.init_std * out_scale;
    f.precision = cfg.precision;
    ffn = std::make_unique<DenseFFN>(f, seed, names::layer_part(layer, names::kFfn), device);
    return;
  }
  moe = std::make_unique<MoELayer>(cfg.moe_layer_config(), stream_id(seed, names::layer_part(layer, names::kMoE)),
                                  make_exchange ? make_exchange() : nullptr, device);
  // The experts' output projections write into the residual stream like every w_out: same scaling.
  scale_in_place(moe->weights.w_out, out_scale);
  if (cfg.moe.shared_experts > 0) {
    DenseFFNConfig f;
    f.d_model = cfg.d_model;
    f.hidden = cfg.moe.shared_hidden();
    f.activation = cfg.moe.activation;
    f.init_std = cfg.init_std;
    f.out_init_std = cfg.init_std * out_scale;
    f.precision = cfg.precision;
    shared = std::make_unique<DenseFFN>(f, seed, names::layer_part(layer, names::kShared), device);
  }
}

TransformerLM::TransformerLM(const TransformerConfig& cfg, uint64_t seed, const ExpertExchangeFactory& make_exchange,
                             Device device)
    : cfg_([&] {
        cfg.validate();
        return cfg;
      }()),
      device_(device),
      final_norm_(cfg.norm, cfg.d_model, cfg.norm_eps, device) {
  cfg_.moe = cfg_.moe_layer_config();
  const int64_t V = cfg_.vocab_size, d = cfg_.d_model;
  weights.embedding = random_normal({V, d}, cfg_.init_std, stream_id(seed, names::kEmbedding), device);
  grads.embedding = Tensor::zeros({V, d}, DType::F32, device);
  if (cfg_.positions == PositionKind::Learned) {
    weights.positions = random_normal({cfg_.seq_len, d}, cfg_.init_std, stream_id(seed, names::kPositions), device);
    grads.positions = Tensor::zeros({cfg_.seq_len, d}, DType::F32, device);
  }
  for (int64_t i = 0; i < cfg_.n_layers; ++i)
    blocks_.push_back(std::make_unique<Block>(cfg_, i, seed, make_exchange, device));
  // Layers that recompute share one scratch for what they no longer keep: the backward refills it.
  if (cfg_.recomputes_experts()) {
    auto scratch = std::make_shared<ExpertActivations>();
    for (MoELayer* layer : moe_layers()) layer->share_expert_activations(scratch);
  }
  if (cfg_.recomputes_attention()) {
    auto scratch = std::make_shared<AttentionProjections>();
    for (auto& blk : blocks_) blk->attn.share_projections(scratch);
  }
  if (!cfg_.tie_embeddings) {
    weights.head = random_normal({d, V}, cfg_.init_std, stream_id(seed, names::kHead), device);
    grads.head = Tensor::zeros({d, V}, DType::F32, device);
  }
}

void TransformerLM::register_parameters(ParameterRegistry& registry) {
  registry.add(names::kEmbedding, weights.embedding, grads.embedding, ParamKind::Dense);
  if (cfg_.positions == PositionKind::Learned)
    registry.add(names::kPositions, weights.positions, grads.positions, ParamKind::Dense);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& blk = *blocks_[i];
    const int64_t layer = static_cast<int64_t>(i);
    blk.norm1.register_parameters(registry, names::layer_part(layer, names::kNorm1));
    blk.attn.register_parameters(registry, names::layer_part(layer, names::kAttn));
    blk.norm2.register_parameters(registry, names::layer_part(layer, names::kNorm2));
    if (blk.ffn) blk.ffn->register_parameters(registry, names::layer_part(layer, names::kFfn));
    if (blk.moe) blk.moe->register_parameters(registry, names::layer_part(layer, names::kMoE));
    if (blk.shared) blk.shared->register_parameters(registry, names::layer_part(layer, names::kShared));
  }
  final_norm_.register_parameters(registry, names::kFinalNorm);
  if (!cfg_.tie_embeddings) registry.add(names::kHead, weights.head, grads.head, ParamKind::Dense);
}

// ---- forward and backward ----

// inputs, targets (N) with N = B * S; every activation (N, d) unless noted.
float TransformerLM::forward(const Tensor& inputs, const Tensor& targets, bool training, const Tensor* positions) {
  const char* op = "TransformerLM::forward";
  require_rank(op, "inputs", inputs, 1);
  require_dtype(op, "inputs", inputs, DType::I32);
  const int64_t N = inputs.dim(0), S = cfg_.seq_len, V = cfg_.vocab_size;
  MOE_REQUIRE(N % S == 0, op, ": inputs has ", N, " tokens, expected whole sequences of seq_len = ", S);
  require_shape(op, "targets", targets, {N});
  require_dtype(op, "targets", targets, DType::I32);
  if (positions != nullptr) {
    require_shape(op, "positions", *positions, {N});
    require_dtype(op, "positions", *positions, DType::I32);
  }
  require_same_device(op, {&inputs, &targets, &weights.embedding, positions});
  forward_done_ = false;  // until this forward completes: a forward that throws leaves no backward
  inputs_ = inputs;
  targets_ = targets;
  document_positions_ = positions != nullptr ? *positions : Tensor();

  if (cfg_.positions == PositionKind::Learned && (!position_ids_.defined() || position_ids_.dim(0) != N)) {
    position_ids_ = Tensor::empty({N}, DType::I32, device_);
    index_ramp(position_ids_, 0, 1, S);  // position of token n: n mod seq_len
  }
  embed(inputs, learned_position_ids());
  blocks_forward(N, training, inputs, positions, nullptr);
  head_forward(N);
  // Only the matrix products take bfloat16 inputs. The norms, the softmax of the cross-entropy (and of
  // the attention) and the residual stream stay float32 in every precision: they sum squares or
  // exponentials over a whole row, where bfloat16's 8-bit significand (relative error up to 2^-8 per value)
  // would lose small terms and the loss itself, a difference of logits, would carry that error in full.
  resize_on(probs_, {N, V}, device_);
  const float loss = cross_entropy_forward(probs_, logits_, targets);
  forward_done_ = true;
  return loss;
}

const Tensor& TransformerLM::forward_cached(const Tensor& tokens, KVCache& cache) {
  const char* op = "TransformerLM::forward_cached";
  require_rank(op, "tokens", tokens, 1);
  require_dtype(op, "tokens", tokens, DType::I32);
  require_same_device(op, {&tokens, &weights.embedding, &cache.k.at(0)});
  const int64_t N = tokens.dim(0), B = cache.batch(), past = cache.length;
  MOE_REQUIRE(static_cast<int64_t>(cache.k.size()) == cfg_.n_layers && cache.k[0].dim(2) == cfg_.d_model, op,
              ": the cache has ", cache.k.size(), " layers of ", cache.k[0].dim(2), " columns, the model ",
              cfg_.n_layers, " of d_model = ", cfg_.d_model);
  MOE_REQUIRE(N > 0 && N % B == 0, op, ": ", N, " tokens are not n >= 1 new tokens for each of the cache's ", B,
              " sequences");
  const int64_t n = N / B;
  MOE_REQUIRE(past + n <= cache.capacity(), op, ": ", past, " cached + ", n, " new tokens exceed the cache's ",
              "capacity of ", cache.capacity());
  MOE_REQUIRE(cfg_.positions != PositionKind::Learned || past + n <= cfg_.seq_len, op, ": ", past, " cached + ", n,
              " new tokens exceed seq_len = ", cfg_.seq_len, ", the rows of the learned position table");
  forward_done_ = false;  // the saved activations are no longer a forward's: no backward
  document_positions_ = Tensor();
  if (cfg_.positions == PositionKind::Learned) {
    resize_on(cached_position_ids_, {N}, device_, DType::I32);
    index_ramp(cached_position_ids_, past, 1, n);  // row b*n + i: position past + i
  }
  embed(tokens, cached_position_ids_);
  blocks_forward(N, false, tokens, nullptr, &cache);
  head_forward(N);
  cache.length = past + n;
  return logits_;
}

KVCache TransformerLM::make_kv_cache(int64_t batch, int64_t capacity) const {
  return KVCache(cfg_.n_layers, batch, capacity, cfg_.d_model, device_);
}

void TransformerLM::embed(const Tensor& ids, const Tensor& position_ids) {
  const int64_t N = ids.dim(0), d = cfg_.d_model;
  resize_on(h0_, {N, d}, device_);
  embedding_forward(h0_, ids, weights.embedding);
  if (cfg_.positions == PositionKind::Learned) {
    resize_on(position_rows_, {N, d}, device_);
    embedding_forward(position_rows_, position_ids, weights.positions);
    add_scaled(h0_, position_rows_, 1.f);
  }
}

void TransformerLM::blocks_forward(int64_t N, bool training, const Tensor& token_ids, const Tensor* positions,
                                   KVCache* cache) {
  const int64_t d = cfg_.d_model;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& blk = *blocks_[i];
    const Tensor& x = block_input(i);
    resize_on(blk.a, {N, d}, device_);
    resize_on(blk.r, {N, d}, device_);
    resize_on(blk.b, {N, d}, device_);
    resize_on(blk.out, {N, d}, device_);
    blk.norm1.forward(blk.a, x);
    if (cache != nullptr)
      blk.attn.forward_cached(blk.r, blk.a, cache->k[i], cache->v[i], cache->length);
    else
      blk.attn.forward(blk.r, blk.a, positions);
    add_scaled(blk.r, x, 1.f);  // r = x + attn(norm1(x))
    blk.norm2.forward(blk.b, blk.r);
    if (blk.moe) {
      blk.moe->forward(blk.out, blk.b, training, &token_ids);  // static routing routes by token id
      if (blk.shared) {
        resize_on(blk.shared_out, {N, d}, device_);
        blk.shared->forward(blk.shared_out, blk.b);
        add_scaled(blk.out, blk.shared_out, 1.f);
      }
    } else {
      blk.ffn->forward(blk.out, blk.b);
    }
    add_scaled(blk.out, blk.r, 1.f);  // out = r + ffn(norm2(r))
  }
}

void TransformerLM::head_forward(int64_t N) {
  resize_on(z_, {N, cfg_.d_model}, device_);
  final_norm_.forward(z_, block_input(blocks_.size()));
  resize_on(logits_, {N, cfg_.vocab_size}, device_);
  // With Precision::BF16 the head's product reads bfloat16 copies of z and of its weight (made anew
  // each forward: the optimizer changes the float32 master every step); the logits are float32.
  const DType products = product_dtype(cfg_.precision);
  z_product_ = as_dtype(z_, z_bf16_, products);
  head_product_ = as_dtype(cfg_.tie_embeddings ? weights.embedding : weights.head, head_bf16_, products);
  if (cfg_.tie_embeddings)
    linear_transposed_forward(logits_, z_product_, head_product_);  // z E^T
  else
    linear_forward(logits_, z_product_, head_product_, nullptr);
}

void TransformerLM::backward() {
  MOE_REQUIRE(forward_done_, "TransformerLM::backward called before forward (or after a forward that failed)");
  const int64_t N = inputs_.dim(0), d = cfg_.d_model;
  Tensor& dlogits = logits_;  // the logits are not needed any more: reuse their (N, V) buffer
  dlogits.zero();
  cross_entropy_backward(dlogits, probs_, targets_, 1.f);
  resize_zeroed(dz_, {N, d}, device_);
  const Tensor& dlogits_product = as_dtype(dlogits, dlogits_bf16_, product_dtype(cfg_.precision));
  if (cfg_.tie_embeddings)
    linear_transposed_backward(&dz_, &grads.embedding, dlogits_product, z_product_, head_product_);  // += head part
  else
    linear_backward(&dz_, &grads.head, nullptr, dlogits_product, z_product_, head_product_);
  resize_zeroed(dh_, {N, d}, device_);
  final_norm_.backward(dh_, dz_);

  // dh_ holds dL/d(block output); each step turns it into dL/d(block input) in place: the residual
  // carries it through unchanged and the branches' input gradients are added to it.
  for (size_t i = blocks_.size(); i-- > 0;) {
    Block& blk = *blocks_[i];
    resize_zeroed(dbranch_, {N, d}, device_);  // dL/db
    if (blk.moe) {
      blk.moe->backward(dbranch_, dh_);
      if (blk.shared) blk.shared->backward(dbranch_, dh_);
    } else {
      blk.ffn->backward(dbranch_, dh_);
    }
    blk.norm2.backward(dh_, dbranch_);  // dh_ = dL/dr
    dbranch_.zero();                    // dL/da
    blk.attn.backward(dbranch_, dh_);
    blk.norm1.backward(dh_, dbranch_);  // dh_ = dL/dx
  }

  embedding_backward(grads.embedding, dh_, inputs_);  // += lookup part
  if (cfg_.positions == PositionKind::Learned) embedding_backward(grads.positions, dh_, learned_position_ids());
}

// ---- accessors and counts ----

double TransformerLM::aux_loss() const {
  double sum = 0.0;
  for (const auto& blk : blocks_)
    if (blk->moe) sum += blk->moe->stats().aux_loss;
  return sum;
}

double TransformerLM::z_loss() const {
  double sum = 0.0;
  for (const auto& blk : blocks_)
    if (blk->moe) sum += blk->moe->stats().z_loss;
  return sum;
}

MoELayer* TransformerLM::moe_layer(int64_t layer) { return blocks_.at(static_cast<size_t>(layer))->moe.get(); }

const MoELayer* TransformerLM::moe_layer(int64_t layer) const {
  return blocks_.at(static_cast<size_t>(layer))->moe.get();
}

std::vector<MoELayer*> TransformerLM::moe_layers() {
  std::vector<MoELayer*> layers;
  for (const auto& blk : blocks_)
    if (blk->moe) layers.push_back(blk->moe.get());
  return layers;
}

double TransformerLM::flops_per_token() const {
  int64_t n = active_params_per_token();
  if (!cfg_.tie_embeddings) n -= cfg_.vocab_size * cfg_.d_model;                      // lookup only
  if (cfg_.positions == PositionKind::Learned) n -= cfg_.seq_len * cfg_.d_model;      // lookup only
  return 6.0 * static_cast<double>(n) +
         12.0 * static_cast<double>(cfg_.n_layers) * static_cast<double>(cfg_.d_model) *
             static_cast<double>(cfg_.seq_len);
}

}  // namespace moe
