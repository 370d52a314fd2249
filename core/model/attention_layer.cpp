// AttentionLayer (core/model/attention_layer.h): QKV projection -> rotary -> causal attention ->
// output projection, and the same path in reverse.
#include "core/model/attention_layer.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/ops.h"
#include "core/parameter_names.h"
#include "core/random.h"

namespace moe {

void AttentionConfig::validate() const {
  MOE_REQUIRE(d_model >= 1, "attention: d_model = ", d_model, " must be >= 1");
  MOE_REQUIRE(n_heads >= 1 && d_model % n_heads == 0, "attention: n_heads = ", n_heads,
              " must be >= 1 and divide d_model = ", d_model);
  MOE_REQUIRE(seq_len >= 1, "attention: seq_len = ", seq_len, " must be >= 1");
  MOE_REQUIRE(n_kv_heads >= 0 && n_heads % kv_heads() == 0, "attention: n_kv_heads = ", n_kv_heads,
              " must divide n_heads = ", n_heads, " (0 = n_heads)");
  MOE_REQUIRE(!rotary || head_dim() % 2 == 0, "attention: head_dim = d_model / n_heads = ", head_dim(),
              " must be even for rotary position embedding");
  MOE_REQUIRE(std::isfinite(rope_theta) && rope_theta > 0.f, "attention: rope_theta = ", rope_theta,
              " must be finite and > 0");
  MOE_REQUIRE(std::isfinite(init_std) && init_std > 0.f, "attention: init_std = ", init_std,
              " must be finite and > 0");
  MOE_REQUIRE(std::isfinite(out_init_std) && out_init_std > 0.f, "attention: out_init_std = ", out_init_std,
              " must be finite and > 0");
}

AttentionLayer::AttentionLayer(const AttentionConfig& cfg, uint64_t seed, const std::string& name, Device device)
    : cfg_(cfg) {
  cfg_.validate();
  const int64_t d = cfg_.d_model;
  weights.w_qkv =
      random_normal({d, cfg_.qkv_width()}, cfg_.init_std, stream_id(seed, names::tensor_name(name, names::kWQkv)), device);
  weights.w_out =
      random_normal({d, d}, cfg_.out_init_std, stream_id(seed, names::tensor_name(name, names::kWOut)), device);
  grads.w_qkv = Tensor::zeros(weights.w_qkv.shape(), DType::F32, device);
  grads.w_out = Tensor::zeros(weights.w_out.shape(), DType::F32, device);
}

void AttentionLayer::register_parameters(ParameterRegistry& registry, const std::string& prefix) {
  registry.add(names::tensor_name(prefix, names::kWQkv), weights.w_qkv, grads.w_qkv, ParamKind::Dense);
  registry.add(names::tensor_name(prefix, names::kWOut), weights.w_out, grads.w_out, ParamKind::Dense);
}

// Token n's row of qkv holds H query heads, then KV key heads, then KV value heads: head rows
// n (H + 2 KV) + j of the (N (H + 2 KV), Dh) view. Query head h reads key/value head h / (H / KV), so
// gathering k and v by these indices repeats each key/value head for its group (Ainslie et al. 2023),
// and the backward's scatter_add_rows sums the group's gradients into it.
void AttentionLayer::make_split_indices(int64_t N) {
  const int64_t H = cfg_.n_heads, KV = cfg_.kv_heads(), group = H / KV, row = H + 2 * KV;
  if (index_q_.defined() && index_q_.dim(0) == N * H) return;
  std::vector<int32_t> q(N * H), k(N * H), v(N * H);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      q[n * H + h] = static_cast<int32_t>(n * row + h);
      k[n * H + h] = static_cast<int32_t>(n * row + H + h / group);
      v[n * H + h] = static_cast<int32_t>(n * row + H + KV + h / group);
    }
  const Device device = weights.w_qkv.device();
  index_q_ = Tensor::from_ints({N * H}, q).to(device);
  index_k_ = Tensor::from_ints({N * H}, k).to(device);
  index_v_ = Tensor::from_ints({N * H}, v).to(device);
}

// x, y (N, d) with N = B * S.
void AttentionLayer::forward(Tensor& y, const Tensor& x, const Tensor* positions) {
  const char* op = "AttentionLayer::forward";
  require_rank(op, "x", x, 2);
  const int64_t N = x.dim(0), d = cfg_.d_model, H = cfg_.n_heads, S = cfg_.seq_len;
  MOE_REQUIRE(x.dim(1) == d && N % S == 0, op, ": x has shape ", to_string(x.shape()),
              ", expected (B * seq_len, d_model) with seq_len = ", S, ", d_model = ", d);
  MOE_REQUIRE(N * (H + 2 * cfg_.kv_heads()) <= INT32_MAX, op, ": ", N, " tokens exceed the int32 row indices");
  make_split_indices(N);
  positions_ = positions != nullptr ? *positions : Tensor();
  const DType products = product_dtype(cfg_.precision);
  x_ = as_dtype(x, x_bf16_, products);
  w_qkv_ = as_dtype(weights.w_qkv, w_qkv_bf16_, products);
  w_out_ = as_dtype(weights.w_out, w_out_bf16_, products);

  project(S, positions, 0);
  // The scores and softmax stay float32 in every precision (q, k and v may be bfloat16; the products
  // sum in float32): an error e in a score scales its weight by exp(e), and bfloat16 would round each
  // score by up to |score| 2^-8.
  const Device device = x.device();
  resize_on(lse_, {N / S, H, S}, device);
  resize_on(attn_, {N, d}, device);
  const AttentionProjections& p = *proj_;
  causal_attention_forward(attn_, lse_, p.q_in, p.k_in, p.v_in, H, S, positions);
  attn_product_ = as_dtype(attn_, attn_bf16_, products);
  linear_forward(y, attn_product_, w_out_, nullptr);  // (N, d)
}

void AttentionLayer::project(int64_t seq_len, const Tensor* positions, int64_t position_offset) {
  const int64_t N = x_.dim(0), d = cfg_.d_model, H = cfg_.n_heads, Dh = cfg_.head_dim();
  const Device device = x_.device();
  AttentionProjections& p = *proj_;
  resize_on(p.qkv, {N, cfg_.qkv_width()}, device);
  linear_forward(p.qkv, x_, w_qkv_, nullptr);  // (N, qkv_width)
  const Tensor qkv_rows = p.qkv.reshape({N * (H + 2 * cfg_.kv_heads()), Dh});  // see make_split_indices
  resize_on(p.q, {N, d}, device);
  resize_on(p.k, {N, d}, device);
  resize_on(p.v, {N, d}, device);
  auto gather_heads = [&](Tensor& out, const Tensor& index) {
    Tensor head_rows = out.reshape({N * H, Dh});
    gather_rows(head_rows, qkv_rows, index);
  };
  gather_heads(p.q, index_q_);
  gather_heads(p.k, index_k_);
  gather_heads(p.v, index_v_);
  if (cfg_.rotary) {
    rotary_forward(p.q, p.q, H, seq_len, cfg_.rope_theta, positions, position_offset);  // in place
    rotary_forward(p.k, p.k, H, seq_len, cfg_.rope_theta, positions, position_offset);
  }
  // On a GPU the attention's products read bfloat16 q, k, v (tensor cores). The CPU's products stay
  // float32 (bfloat16 ones on its 64 x 128 x head_dim blocks measured ~25% faster per product, about 1%
  // of a small-config step: not built), so there rounding q, k, v would only add a pass each way.
  const DType products = device == Device::CPU ? DType::F32 : product_dtype(cfg_.precision);
  p.q_in = as_dtype(p.q, p.q_bf16, products);
  p.k_in = as_dtype(p.k, p.k_bf16, products);
  p.v_in = as_dtype(p.v, p.v_bf16, products);
}

// x, y (B*n, d); k_cache, v_cache (B, T, d).
void AttentionLayer::forward_cached(Tensor& y, const Tensor& x, Tensor& k_cache, Tensor& v_cache, int64_t past) {
  const char* op = "AttentionLayer::forward_cached";
  require_rank(op, "k_cache", k_cache, 3);
  const int64_t B = k_cache.dim(0), T = k_cache.dim(1), d = cfg_.d_model, N = x.dim(0), n = N / B;
  require_shape(op, "v_cache", v_cache, k_cache.shape());
  MOE_REQUIRE(k_cache.dim(2) == d && x.rank() == 2 && x.dim(1) == d && N % B == 0 && N > 0, op, ": x has shape ",
              to_string(x.shape()), " and the cache ", to_string(k_cache.shape()),
              ", expected (B * n, d_model) and (B, T, d_model) with d_model = ", d);
  MOE_REQUIRE(past >= 0 && past + n <= T, op, ": ", past, " cached + ", n, " new tokens exceed the cache's ", T);
  make_split_indices(N);
  positions_ = Tensor();
  const DType products = product_dtype(cfg_.precision);
  x_ = as_dtype(x, x_bf16_, products);
  w_qkv_ = as_dtype(weights.w_qkv, w_qkv_bf16_, products);
  w_out_ = as_dtype(weights.w_out, w_out_bf16_, products);
  project(n, nullptr, past);  // B sequences of n rows at positions past + i
  const AttentionProjections& p = *proj_;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t row = b * T + past;
    k_cache.reshape({B * T, d}).rows(row, row + n).copy_from(p.k.rows(b * n, (b + 1) * n));
    v_cache.reshape({B * T, d}).rows(row, row + n).copy_from(p.v.rows(b * n, (b + 1) * n));
  }
  resize_on(attn_, {N, d}, x.device());
  cached_attention_forward(attn_, p.q, k_cache, v_cache, cfg_.n_heads, past);
  attn_product_ = as_dtype(attn_, attn_bf16_, products);
  linear_forward(y, attn_product_, w_out_, nullptr);  // (N, d)
}

void AttentionLayer::share_projections(std::shared_ptr<AttentionProjections> scratch) {
  MOE_ASSERT(cfg_.recompute && scratch != nullptr, "only layers that recompute share their projections");
  proj_ = std::move(scratch);
}

int64_t AttentionLayer::saved_numel() const {
  int64_t n = 0;
  for (const Tensor* t : {&x_bf16_, &lse_, &attn_, &attn_bf16_, &index_q_, &index_k_, &index_v_})
    if (t->defined()) n += t->numel();
  if (!cfg_.recompute)
    for (const Tensor* t : {&proj_->qkv, &proj_->q, &proj_->k, &proj_->v, &proj_->q_bf16, &proj_->k_bf16,
                            &proj_->v_bf16})
      if (t->defined()) n += t->numel();
  return n;
}

// dx, dy (N, d).
void AttentionLayer::backward(Tensor& dx, const Tensor& dy) {
  MOE_REQUIRE(x_.defined(), "AttentionLayer::backward called before forward");
  const int64_t N = x_.dim(0), d = cfg_.d_model, H = cfg_.n_heads, S = cfg_.seq_len, Dh = cfg_.head_dim();
  require_shape("AttentionLayer::backward", "dy", dy, {N, d});
  const Device device = dy.device();
  const DType products = product_dtype(cfg_.precision);

  resize_zeroed(d_attn_, {N, d}, device);
  linear_backward(&d_attn_, &grads.w_out, nullptr, as_dtype(dy, dy_bf16_, products), attn_product_, w_out_);
  resize_zeroed(dq_, {N, d}, device);
  resize_zeroed(dk_, {N, d}, device);
  resize_zeroed(dv_, {N, d}, device);
  if (cfg_.recompute) project(S, positions(), 0);  // the shared projections hold another layer's, or nothing kept
  const AttentionProjections& p = *proj_;
  causal_attention_backward(&dq_, &dk_, &dv_, d_attn_, p.q_in, p.k_in, p.v_in, attn_, lse_, H, S, positions());

  resize_zeroed(dqkv_, {N, cfg_.qkv_width()}, device);
  Tensor dqkv_rows = dqkv_.reshape({N * (H + 2 * cfg_.kv_heads()), Dh});
  // Grouped key/value heads receive the sum over their group: repeated indices add (on CUDA by atomics,
  // so in no fixed order when KV < H).
  auto add_heads = [&](const Tensor& grad, const Tensor& index) {
    scatter_add_rows(dqkv_rows, grad.reshape({N * H, Dh}), index);
  };
  if (cfg_.rotary) {
    resize_zeroed(d_pre_, {N, d}, device);
    rotary_backward(d_pre_, dq_, H, S, cfg_.rope_theta, positions());
    add_heads(d_pre_, index_q_);
    d_pre_.zero();
    rotary_backward(d_pre_, dk_, H, S, cfg_.rope_theta, positions());
    add_heads(d_pre_, index_k_);
  } else {
    add_heads(dq_, index_q_);
    add_heads(dk_, index_k_);
  }
  add_heads(dv_, index_v_);
  linear_backward(&dx, &grads.w_qkv, nullptr, as_dtype(dqkv_, dqkv_bf16_, products), x_, w_qkv_);
}

}  // namespace moe
