// Core ops, float32 (the linear ops and the MoE row movement also take bfloat16), forward and backward
// side by side; each call checks shapes and runs on the tensors' device (the CPU, or CUDA in a build with
// it: the backends implement core/backend_ops.inc).
//
// Conventions for every op here:
//  - forward functions overwrite their outputs, which the caller allocates with the shapes given;
//  - backward functions ACCUMULATE (+=) into every gradient they produce (dx, dw, ...), so a tensor
//    used in two places simply receives both contributions; zero gradients before a backward pass;
//  - a pointer argument may be null to skip that input (bias) or that gradient;
//  - outputs must not share memory with inputs, except where an op says it may run in place;
//  - shape comments use N for rows (tokens), C for columns (features or classes);
//  - bfloat16 (mixed precision): the linear ops (linear_*, linear_transposed_*, grouped_linear_*) take
//    their product inputs x, w and, in the backward, dy either all float32 or all bfloat16; each product
//    of two bfloat16 values is exact in float32 and the sums are float32. Their outputs (y, dx, dw, db)
//    and the bias b are float32 always: y feeds float32 ops, dw accumulates into the float32 master
//    gradient, and a caller that wants dx in bfloat16 converts it. dy is bfloat16 because both backward
//    products read it: the caller converts the float32 gradient from upstream once, and db sums the
//    bfloat16 values. gather_rows copies bfloat16 rows as they are, and scatter_add_rows adds bfloat16
//    rows into a float32 dx (the MoE layer's token rows travel in bfloat16). relu, gelu and swiglu write
//    y and accumulate dx in float32 or bfloat16: the value is computed in float32 and rounded once
//    (bfloat16 dx: dx = round(dx + gradient)), so a product's bfloat16 input is written without a float32
//    copy and a conversion pass. Every other op is float32 only.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

// convert: y = x in another dtype, float32 -> bfloat16 (round to nearest, ties to even; NaN stays NaN,
// a value beyond bfloat16's range becomes infinity) or bfloat16 -> float32 (exact). x, y (any shape, same).
void convert(Tensor& y, const Tensor& x);
// x in `dtype`: x itself when it has that dtype, else `buffer` made to hold x converted (resize_on x's
// shape and device, so a buffer kept between calls is allocated once).
const Tensor& as_dtype(const Tensor& x, Tensor& buffer, DType dtype);

// linear: y = x w (+ b).  x (N, in), w (in, out), b (out) or null, y (N, out).
void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b);
// dx (N, in) += dy w^T;  dw (in, out) += x^T dy;  db (out) += sum_rows dy.
void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x,
                     const Tensor& w);

// grouped_linear: one weight per group of rows (the MoE experts over the permuted token buffer).
// x (M, in) with group g the rows [offset[g], offset[g+1]); offset has G + 1 entries, offset[0] = 0,
// offset[G] = M, non-decreasing (a group may be empty); w (G, in, out); y (M, out), y_g = x_g w_g.
// x and w float32, or both bfloat16 (y float32), as the linear ops. The CPU runs a GEMM per non-empty
// group (bfloat16: a oneDNN primitive with the row count left open, so new row counts create none), CUDA
// one grouped GEMM for them all (bfloat16: a cublasGemmEx per group); InvalidArgument names a bad offset
// entry.
void grouped_linear_forward(Tensor& y, const Tensor& x, const std::vector<int64_t>& offset, const Tensor& w);
// dx_g (rows of group g, in) += dy_g w_g^T;  dw_g (in, out) += x_g^T dy_g (an empty group's dw_g is
// unchanged).  dy (M, out) in x's dtype; dx (M, in) and dw (G, in, out) float32, either may be null.
void grouped_linear_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x,
                             const std::vector<int64_t>& offset, const Tensor& w);

// relu: y = max(x, 0).  x, y (any shape, same); y and dx float32 or bfloat16 (see above), x, dy float32.
void relu_forward(Tensor& y, const Tensor& x);
void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& x);

// gelu, tanh approximation (as GPT-2 and Megatron use): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_forward(Tensor& y, const Tensor& x);
void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x);

// swiglu: x (N, 2h) holds [gate | up] per row; y (N, h) = silu(gate) * up, silu(g) = g sigmoid(g).
void swiglu_forward(Tensor& y, const Tensor& x);
void swiglu_backward(Tensor& dx, const Tensor& dy, const Tensor& x);

// sigmoid: y = 1 / (1 + exp(-x)), elementwise with the precise exp (the router's scores: the top-k
// choice turns on small differences between them).  x, y (any shape, same).
void sigmoid_forward(Tensor& y, const Tensor& x);
// dx += dy * y * (1 - y), using the forward's output y.
void sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& y);

// softmax over the last dimension: x, y (N, C).
void softmax_forward(Tensor& y, const Tensor& x);
// dx += y * (dy - sum_c dy*y), using the forward's output y.
void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y);

// normalize_rows: y[n, c] = x[n, c] / S_n with S_n = sum_c x[n, c], the row sum in float32 from c = 0
// up. x, y (N, C); every row sum must be non-zero (the router's sigmoid scores: positive). Meant for rows
// of tens of columns (a token's expert scores).
void normalize_rows_forward(Tensor& y, const Tensor& x);
// dx[n, c] += (dy[n, c] - sum_j dy[n, j] y[n, j]) / S_n, y and S_n recomputed from x as the forward does.
void normalize_rows_backward(Tensor& dx, const Tensor& dy, const Tensor& x);

// rmsnorm: y = x / sqrt(mean(x^2) + eps) * g.  x, y (N, C); g (C); rstd (N) saved for backward.
void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& g, float eps);
void rmsnorm_backward(Tensor* dx, Tensor* dg, const Tensor& dy, const Tensor& x, const Tensor& g,
                      const Tensor& rstd);

// layernorm: y = (x - mean) / sqrt(var + eps) * g + b.  x, y (N, C); g, b (C); mean, rstd (N) saved.
void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& g,
                       const Tensor& b, float eps);
void layernorm_backward(Tensor* dx, Tensor* dg, Tensor* db, const Tensor& dy, const Tensor& x,
                        const Tensor& g, const Tensor& mean, const Tensor& rstd);

// cross-entropy with fused softmax: logits (N, V), targets (N) int32 in [0, V) or -1 (ignored row).
// Writes probs (N, V) and returns the mean loss over non-ignored rows (0 if there are none).
// Throws InvalidArgument naming the row if a target is out of range.
float cross_entropy_forward(Tensor& probs, const Tensor& logits, const Tensor& targets);
// dlogits (N, V) += dloss * (probs - onehot(target)) / (number of non-ignored rows).
void cross_entropy_backward(Tensor& dlogits, const Tensor& probs, const Tensor& targets, float dloss);

// embedding: y (N, d) = table[ids].  ids (N) int32 in [0, V); table (V, d).
// Throws InvalidArgument naming the position if an id is out of range.
void embedding_forward(Tensor& y, const Tensor& ids, const Tensor& table);
// dtable[ids[n]] += dy[n].
void embedding_backward(Tensor& dtable, const Tensor& dy, const Tensor& ids);

// Row movement for token permutation (the MoE dispatch).
// gather_rows: y (M, C) = x[index[m]], index (M) int32 in [0, N), x (N, C); x and y float32, or both
// bfloat16.
void gather_rows(Tensor& y, const Tensor& x, const Tensor& index);
// scatter_add_rows: dx[index[m]] += dy[m] (the backward of gather_rows). dx (N, C) float32, dy (M, C)
// float32 or bfloat16 (added in float32).
void scatter_add_rows(Tensor& dx, const Tensor& dy, const Tensor& index);

// combine: y (T, C) = sum_j weights[t, j] * rows[slot[t, j]] over j with slot[t, j] >= 0.
// rows (M, C); slot (T, k) int32 in [-1, M), -1 meaning "contributes nothing"; weights (T, k).
void combine_forward(Tensor& y, const Tensor& rows, const Tensor& slot, const Tensor& weights);
// drows[slot[t, j]] += weights[t, j] * dy[t];  dweights[t, j] += dot(dy[t], rows[slot[t, j]]).
void combine_backward(Tensor* drows, Tensor* dweights, const Tensor& dy, const Tensor& rows,
                      const Tensor& slot, const Tensor& weights);

// Elementwise helper: y += alpha * x (same shape).
void add_scaled(Tensor& y, const Tensor& x, float alpha);

// linear_transposed: y = x w^T, the weight stored (out, in) as nn.Linear and a tied output head
// (logits = x E^T with the embedding E (V, d)) hold it.  x (N, in), w (out, in), y (N, out).
void linear_transposed_forward(Tensor& y, const Tensor& x, const Tensor& w);
// dx (N, in) += dy w;  dw (out, in) += dy^T x.
void linear_transposed_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x, const Tensor& w);

// ---- attention ----
// Token rows are sequence-major: row n = b * S + s of a (B*S, C) tensor is position s of sequence b
// (S = seq_len, B = N / S). Head h of a row is columns [h * Dh, (h + 1) * Dh), C = H * Dh.
//
// Documents packed into a sequence (data.document_mask): `positions` (B*S) int32, or null. Entry n is
// token n's position in its document: 0 at the document's first token, counting up from there, so
// 0 <= positions[n] <= s (each backend checks, naming the first bad entry; the CUDA one with one copy
// of its verdict to the host). Rotary rotates token n by positions[n], and the attention's query n
// sees the keys [s - positions[n], s] of its sequence: its own document's tokens up to itself, when
// the documents lie contiguously and positions restart at 0 at each. Null means positions[n] = s: one
// document per sequence, the plain causal attention.

// rotary position embedding (RoPE, Su et al. 2021): rotates each pair (2i, 2i+1) of each head of the
// token at position s by the angle s * theta^(-2i / Dh).  x, y (B*S, H*Dh), Dh even, theta > 0
// (10000 as in RoFormer and LLaMA). May run in place (y and x the same tensor).
// position_offset >= 0 is added to every token's position: decoding with a KV cache rotates its S new
// tokens per sequence, which stand at positions offset .. offset + S - 1 (the backward has none: the
// cache is inference only).
void rotary_forward(Tensor& y, const Tensor& x, int64_t n_heads, int64_t seq_len, float theta,
                    const Tensor* positions = nullptr, int64_t position_offset = 0);
// dx (B*S, H*Dh) += the inverse rotation of dy (rotations are orthogonal: R^-1 = R^T).
void rotary_backward(Tensor& dx, const Tensor& dy, int64_t n_heads, int64_t seq_len, float theta,
                     const Tensor* positions = nullptr);

// causal self-attention per sequence and head, scale 1 / sqrt(Dh):
//   P[b, h][i, j] = softmax over j <= i of (q_i . k_j) / sqrt(Dh), 0 for j > i (with positions: over
//                   i - positions[b*S + i] <= j <= i, 0 elsewhere);
//   out[b*S + i, head h] = sum_j P[b, h][i, j] v[b*S + j, head h];
//   lse[b, h, i] = log sum over those j of exp((q_i . k_j) / sqrt(Dh)), what the backward needs to recompute P.
// q, k, v (B*S, H*Dh), all float32 or all bfloat16 (the products read them as they are, summing in
// float32); out (B*S, H*Dh) and lse (B, H, S) float32, overwritten. Scores and softmax are float32.
// Memory beyond the outputs is bounded, never a (B, H, S, S) tensor: the CPU works in blocks of query
// rows x key rows with an online softmax (FlashAttention-2, Dao 2023), skipping key blocks after a
// query block's last row; CUDA in blocks of query rows, all heads and the keys they see, through
// batched cuBLAS products (with bfloat16 inputs its P and dS are rounded to bfloat16 for the products
// that read them, as tensor-core attention kernels do), at most 2^25 scores at a time.
void causal_attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t n_heads, int64_t seq_len, const Tensor* positions = nullptr);
// dq, dk, dv (B*S, H*Dh) float32 += the gradients of out given dout (B*S, H*Dh) float32; any may be
// null. Recomputes P block by block from q, k and the forward's lse; the forward's out gives the
// softmax backward's row term D_i = dout_i . out_i (so dS = P * (dout V^T - D)). `positions` must be
// the forward's.
void causal_attention_backward(Tensor* dq, Tensor* dk, Tensor* dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                               int64_t n_heads, int64_t seq_len, const Tensor* positions = nullptr);

// cached_attention_forward: the causal attention of n new tokens per sequence over a KV cache (inference,
// no backward). q (B*n, H*Dh): row b*n + i is the query of sequence b's token at position past + i;
// k_cache, v_cache (B, T, H*Dh) with rows [0, past + n) of each sequence filled (the new tokens' keys and
// values already appended), past >= 0, past + n <= T; out (B*n, H*Dh), overwritten. Query i sees cache
// rows [0, past + i], as causal_attention_forward's query past + i sees keys [0, past + i] of the whole
// sequence: out[b*n + i, head h] = sum_j softmax_j((q . k_j) / sqrt(Dh)) v_j. float32 only. Memory beyond
// out: one score per (query, head, key seen) at most, CUDA in chunks of query rows (at most 2^25 scores).
void cached_attention_forward(Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              int64_t n_heads, int64_t past);

// ---- router (MoE gating): top-k, jitter, auxiliary losses ----
// T tokens, E experts, k experts chosen per token, d features.

// topk_forward: the k experts with the highest probs + selection_bias of each row, best first (ties:
// the lower expert id), weighted by their unbiased probs, renormalised to sum to 1 when `renormalize`,
// then multiplied by `scale` (a finite value > 0; 1 leaves the weights' bits as they are).
// probs (T, E): the router's scores, softmax probabilities or sigmoid scores; selection_bias (E) or null
// (auxiliary-loss-free balancing: it steers the choice, never the weights); expert (T, k) int32;
// weight (T, k); 1 <= k <= E. With `renormalize`, a row whose chosen scores sum below FLT_MIN (all
// underflowed to 0 or to subnormals: only a selection_bias makes the top k pick such experts) gets
// equal weights 1/k (times scale), not 0/0 = NaN; docs/routing.md says why.
void topk_forward(Tensor& expert, Tensor& weight, const Tensor& probs, int64_t k, bool renormalize,
                  const Tensor* selection_bias = nullptr, float scale = 1.0f);
// dprobs (T, E) += the gradient of the weights (T, k) given dweight (T, k): dweight scattered to the
// chosen experts, through the renormalisation when `renormalize` and the scale; nothing for a row that
// topk_forward gave equal weights (they are constants). expert (T, k) int32 in [0, E); weight and scale
// as the forward gave and took them.
void topk_backward(Tensor& dprobs, const Tensor& dweight, const Tensor& expert, const Tensor& weight,
                   const Tensor& probs, bool renormalize, float scale = 1.0f);

// expert_choice_topk: expert-choice routing's selection (Zhou et al. 2022), a top-C per column: row e of
// token holds the C tokens t with the highest scores[t, e], best first, ties to the lower token index.
// scores (T, E) finite; token (E, C) int32 with 0 <= C <= T. There is no backward: the combine weights
// are the chosen scores themselves, and the choice (like top-k) has no gradient.
void expert_choice_topk(Tensor& token, const Tensor& scores);

// static_route_forward: static routing (hash, table; core/moe/static_routing.h) looked up per token:
// expert[t, j] = routes[token_ids[t], j] and weight[t, j] = 1 / k. routes (V, k) int32 with distinct
// experts per row (the caller's map, not checked here); token_ids (T) int32 in [0, V) (checked: an id
// out of range throws InvalidArgument naming it); expert (T, k) int32; weight (T, k). No backward: the
// map and the weights are constants.
void static_route_forward(Tensor& expert, Tensor& weight, const Tensor& routes, const Tensor& token_ids);

// jitter_forward: multiplicative noise for the router input. noise[i] = lo + (hi - lo) U_i with
// lo = 1 - eps, hi = 1 + eps and U_i = uniform01(stream, offset + i) (core/random.h), so a token's
// noise depends only on its global position; y = x * noise. x, y, noise (T, d); eps in [0, 1).
void jitter_forward(Tensor& y, Tensor& noise, const Tensor& x, float eps, uint64_t stream, uint64_t offset);
// dx (T, d) += dy * noise.
void jitter_backward(Tensor& dx, const Tensor& dy, const Tensor& noise);

// group_limit_forward: the first level of group-limited routing (DeepSeek-V3's node-limited,
// DeepSeek-V2's device-limited routing; docs/routing.md). The E experts form `groups` contiguous groups
// of E / groups (groups divides E). With s = probs + selection_bias a row's selection scores, its score of
// a group is the highest s in it (terms = 1) or the sum of the two highest (terms = 2; the highest
// alone in a group of one); the row keeps its `top_groups` groups with the highest scores (ties: the
// lower group id). limited (T, E) = probs where the expert's group is kept, -infinity elsewhere, so
// topk_forward on limited (with the same selection_bias) chooses by the same s among the kept groups'
// experts only and weighs them by the same probs, given k <= top_groups * E / groups. No backward: the
// group choice is a selection, like top-k's, and topk_backward reads probs only at the chosen experts.
// probs (T, E); selection_bias (E) or null; 1 <= top_groups <= groups.
void group_limit_forward(Tensor& limited, const Tensor& probs, const Tensor* selection_bias, int64_t groups,
                         int64_t top_groups, int64_t terms);

// load_balance_sums: the ingredients of the load-balancing loss (core/moe/aux_losses.h), per group of
// rows, returned on the host in double because ranks all-reduce them before forming the loss. The T rows
// are G = `groups` consecutive groups of T / G rows (G >= 1 divides T; the sequence scope's sequences,
// else one group); row t is in group g = t / (T / G):
//   prob_sum[g * E + e] = sum_{t in g} probs[t, e];
//   choice_count[g * E + e] = number of (t in g, j) with expert[t, j] = e.
// probs (T, E); expert (T, k) int32 in [0, E); both vectors are resized to G * E.
void load_balance_sums(std::vector<double>& prob_sum, std::vector<double>& choice_count, const Tensor& probs,
                       const Tensor& expert, int64_t groups = 1);
// dprobs (T, E) += dloss * coeff * E * (choice_count[g * E + e] / num_choices) / num_tokens / G for every
// row t of group g: the gradient of coeff * E * (1/G) sum_g sum_e f_ge P_ge through P_ge =
// prob_sum[g * E + e] / num_tokens (f, a count, is held fixed). choice_count (G * E; G = its size / E,
// which must divide T) and the per-group counts num_choices, num_tokens (> 0) as load_balance_sums
// gives them, all-reduced or not.
void load_balance_backward(Tensor& dprobs, const std::vector<double>& choice_count, double num_choices,
                           double num_tokens, double coeff, double dloss);

// z-loss (ST-MoE): returns coeff * sum_t logsumexp(logits[t])^2 / mean_over, summed in double;
// 0 when mean_over is 0. logits (T, E), E >= 1; mean_over >= 0 is the token count of the mean (T
// locally, the global count when ranks average together).
double z_loss_forward(const Tensor& logits, double coeff, double mean_over);
// dlogits (T, E) += dloss * coeff * 2 * logsumexp(logits[t]) / mean_over * probs[t, e], with
// probs (T, E) = softmax(logits) from the forward. Adds nothing when mean_over is 0.
void z_loss_backward(Tensor& dlogits, const Tensor& logits, const Tensor& probs, double coeff,
                     double mean_over, double dloss);

// ---- checks ----

// The flat index (in row-major order) of x's first element that is NaN or infinite, -1 when every
// element is finite. x float32, any shape.
int64_t first_nonfinite(const Tensor& x);

// ---- index tensors ----

// index_ramp: index (N) int32, index[n] = start + step * (n mod period), period >= 1; every value must
// fit int32. The row indices of regular layouts: token positions n mod seq_len (start 0, step 1,
// period seq_len), the q, k, v rows 3n + c of a packed QKV projection (start c, step 3, period N).
void index_ramp(Tensor& index, int64_t start, int64_t step, int64_t period);

}  // namespace moe
