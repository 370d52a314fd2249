// CPU attention ops, forward and backward side by side: rotary position embedding and causal
// multi-head self-attention, blocked with an online softmax (GEMMs per block pair; no (S, S) matrix),
// in float32 (bfloat16 inputs are widened first).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/cpu/fast_math.h"
#include "core/cpu/gemm.h"
#include "core/cpu/index_check.h"
#include "core/cpu/lane_sum.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

namespace {

// ---- rotary tables ----

// cos and sin of s * theta^(-2i / Dh) for s in [0, positions), i in [0, Dh/2), row-major (positions, Dh/2).
struct RotaryTable {
  int64_t positions = -1, head_dim = -1;
  float theta = 0.f;
  std::vector<float> cos, sin;
};

// A table for these settings with at least `positions` rows, cached per thread: a run calls with the
// same (S, Dh, theta) in every layer and step, and the S * Dh / 2 sin/cos pairs would otherwise cost
// about as much as the rotation; decoding with a KV cache asks for one more position per step and gets
// a table grown by doubling. Row s does not depend on the table's length. Angles are formed and
// evaluated in double: s * freq reaches thousands of radians, where a float32 angle would be off by
// ~1e-4 rad.
const RotaryTable& rotary_table(int64_t positions, int64_t head_dim, float theta) {
  thread_local RotaryTable table;
  if (table.positions >= positions && table.head_dim == head_dim && table.theta == theta) return table;
  if (table.head_dim == head_dim && table.theta == theta) positions = std::max(positions, 2 * table.positions);
  const int64_t half = head_dim / 2;
  table.cos.resize(static_cast<size_t>(positions * half));
  table.sin.resize(static_cast<size_t>(positions * half));
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / head_dim);
    for (int64_t s = 0; s < positions; ++s) {
      const double angle = static_cast<double>(s) * freq;
      table.cos[s * half + i] = static_cast<float>(std::cos(angle));
      table.sin[s * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  table.positions = positions;
  table.head_dim = head_dim;
  table.theta = theta;
  return table;
}

// The document positions (checked: 0 <= positions[n] <= n % S), or null without them.
const int32_t* document_positions(const char* op, const Tensor* positions, int64_t seq_len) {
  if (positions == nullptr) return nullptr;
  require_document_positions(op, *positions, seq_len);
  return positions->i32();
}

// Calls pair(out + j, in + j, cos, sin) for the first column j = 2i of each column pair (2i, 2i + 1) of
// each head of each row of in, out (N, C = H*Dh), with the cos and sin of row n's position: offset plus
// n % S, or plus positions[n] (checked to be in [0, n % S]).
template <typename PairFn>
void for_each_rotary_pair(const char* op, float* out, const float* in, int64_t N, int64_t C, int64_t n_heads,
                          int64_t seq_len, float theta, const Tensor* positions, int64_t offset, PairFn pair) {
  const int32_t* pos = document_positions(op, positions, seq_len);
  const int64_t head_dim = C / n_heads, half = head_dim / 2;
  const RotaryTable& table = rotary_table(offset + seq_len, head_dim, theta);
  const float* pcos = table.cos.data();
  const float* psin = table.sin.data();
#pragma omp parallel for if (N * C >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t position = offset + (pos != nullptr ? pos[n] : n % seq_len);
    const float* c = pcos + position * half;
    const float* s = psin + position * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* in_h = in + n * C + h * head_dim;
      float* out_h = out + n * C + h * head_dim;
      for (int64_t i = 0; i < half; ++i) pair(out_h + 2 * i, in_h + 2 * i, c[i], s[i]);
    }
  }
}

// ---- attention ----

// Blocks of query rows x key rows: the GEMMs of a block pair stay large enough to run near GEMM
// speed, a key block past a query block's last row is never visited (about half the work of long
// sequences), and a thread's scratch is a few blocks, whatever S is. Measured on one thread (forward
// + backward, Zen 4), 64 x 128 was the fastest of 32..128 x 32..256 at the small config's shape and at
// S = 2048 (15% faster there than 64 x 64), and tied at the tiny config's.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 128;
// Key blocks then start at or before the first row of every query block they meet (c0 < r0 + 64 and
// both multiples of 64), so each row of a visited block sees at least one key of it.
static_assert(kKeyBlock % kQueryBlock == 0, "key blocks must start at a query block's boundary");

// A thread's scratch, kept between calls: the scores of one block pair (and, in the backward, dS),
// and three values per query row of a block.
struct BlockScratch {
  std::vector<float> scores = std::vector<float>(2 * kQueryBlock * kKeyBlock);
  std::vector<float> row_max = std::vector<float>(kQueryBlock), row_sum = row_max, row_term = row_max;
};

// The tasks (query blocks or (sequence, head) pairs) run in parallel, each with single-threaded GEMMs
// (the provider runs serially inside a parallel region), when there are several and enough work for a
// team; a single task leaves the threads to the GEMMs.
bool parallel_attention(int64_t tasks, int64_t pairs, int64_t seq_len, int64_t head_dim) {
  return tasks > 1 && pairs * seq_len * seq_len * head_dim >= kMinParallelElements;
}

// The B*H (sequence, head) pairs of one causal attention call on q, k, v (B*S, C = H*Dh), each an
// (S, Dh) column block of the token rows; and the score scale 1 / sqrt(Dh).
struct AttentionPairs {
  AttentionPairs(const Tensor& q, int64_t heads, int64_t seq_len)
      : C(q.dim(1)), head_dim(C / heads), S(seq_len), n_heads(heads), count((q.dim(0) / seq_len) * heads),
        scale(1.f / std::sqrt(static_cast<float>(head_dim))) {}
  // Where pair bh's block starts in the token rows: row b * S, column h * Dh.
  int64_t offset(int64_t bh) const { return (bh / n_heads) * S * C + (bh % n_heads) * head_dim; }
  // The document positions of pair bh's sequence from row r0 (null: none given).
  const int32_t* positions(const int32_t* pos, int64_t bh, int64_t r0) const {
    return pos != nullptr ? pos + (bh / n_heads) * S + r0 : nullptr;
  }
  int64_t C, head_dim, S, n_heads, count;
  float scale;
};

}  // namespace

// ---- rotary position embedding: x, y, dx, dy (B*S, H*Dh); row n is position n % S or positions[n] ----

// (y0, y1) = (x0 cos - x1 sin, x0 sin + x1 cos) for each pair; both inputs are read before either
// output is written, so y may be x.
void rotary_forward(Tensor& y, const Tensor& x, int64_t n_heads, int64_t seq_len, float theta,
                    const Tensor* positions, int64_t position_offset) {
  for_each_rotary_pair("rotary_forward", y.f32(), x.f32(), x.dim(0), x.dim(1), n_heads, seq_len, theta, positions,
                       position_offset, [](float* y_pair, const float* x_pair, float c, float s) {
                         const float x0 = x_pair[0], x1 = x_pair[1];
                         y_pair[0] = x0 * c - x1 * s;
                         y_pair[1] = x0 * s + x1 * c;
                       });
}

// The transpose (inverse) rotation: (dx0, dx1) += (dy0 cos + dy1 sin, -dy0 sin + dy1 cos).
void rotary_backward(Tensor& dx, const Tensor& dy, int64_t n_heads, int64_t seq_len, float theta,
                     const Tensor* positions) {
  for_each_rotary_pair("rotary_backward", dx.f32(), dy.f32(), dy.dim(0), dy.dim(1), n_heads, seq_len, theta,
                       positions, 0,
                       [](float* dx_pair, const float* dy_pair, float c, float s) {
                         const float dy0 = dy_pair[0], dy1 = dy_pair[1];
                         dx_pair[0] += dy0 * c + dy1 * s;
                         dx_pair[1] += -dy0 * s + dy1 * c;
                       });
}

// ---- causal attention ----
// Per (b, h): Q, K, V, O are (S, Dh) strided views (row stride C = H * Dh) starting at row b * S,
// column h * Dh; lse[b, h] is (S).  P = causal_softmax(Q K^T / sqrt(Dh));  O = P V.
// Blocked with an online softmax (FlashAttention-2, Dao 2023): query block i meets key blocks
// j <= i one at a time, keeping a running row max m and row sum l, so no (S, S) matrix exists; the
// backward recomputes each block of P from lse = m + log l.

namespace {

// The keys of a block (cols keys from c0) that query row r0 + ii sees, as columns [first, end) of the
// block: keys [r0 + ii - positions[ii], r0 + ii] (from key 0 without positions). Empty only with
// positions: a document starting after the block.
struct SeenKeys {
  int64_t first, end;
};
SeenKeys seen_keys(int64_t ii, int64_t cols, int64_t r0, int64_t c0, const int32_t* positions) {
  const int64_t end = std::min(cols, r0 + ii + 1 - c0);
  return {positions != nullptr ? std::max<int64_t>(0, r0 + ii - positions[ii] - c0) : 0, end};
}

// The forward's online softmax over one block of scores (rows, cols), key block starting at key c0,
// query rows r0 + ii with their document positions (or null): masks the keys each query does not see,
// replaces the scores by exp(s - m_new) (0 where masked), updates the running max and sum, and returns
// each row's factor exp(m_old - m_new) for its output accumulator in `correction`.
void online_softmax_block(float* scores, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                          const int32_t* positions, float* row_max, float* row_sum, float* correction) {
  for (int64_t ii = 0; ii < rows; ++ii) {
    float* s = scores + ii * cols;
    const auto [first, end] = seen_keys(ii, cols, r0, c0, positions);
    if (first >= end) {  // nothing seen here: the accumulator stays as it is (0 while it is empty)
      std::fill(s, s + cols, 0.f);
      correction[ii] = row_max[ii] == -INFINITY ? 0.f : 1.f;
      continue;
    }
    const float m_new = std::max(row_max[ii], lane_max(s + first, end - first));
    // The first block of a row has row_max = -inf: its accumulator is empty, so the factor is 0.
    correction[ii] = row_max[ii] == -INFINITY ? 0.f : fast_exp(row_max[ii] - m_new);
    std::fill(s, s + first, 0.f);
    for (int64_t j = first; j < end; ++j) s[j] = fast_exp(s[j] - m_new);
    const float sum = lane_sum(end - first, [&](int64_t j) { return s[first + j]; });
    std::fill(s + end, s + cols, 0.f);
    row_sum[ii] = row_sum[ii] * correction[ii] + sum;
    row_max[ii] = m_new;
  }
}

// The backward's block of P in place of its scores (rows, cols), query rows r0 + ii, keys c0 + j:
// exp(s - lse) where the query sees the key, 0 where masked.
void recompute_probs_block(float* scores, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                           const int32_t* positions, const float* lse) {
  for (int64_t ii = 0; ii < rows; ++ii) {
    float* s = scores + ii * cols;
    const auto [first, end] = seen_keys(ii, cols, r0, c0, positions);
    if (first >= end) {
      std::fill(s, s + cols, 0.f);
      continue;
    }
    std::fill(s, s + first, 0.f);
    for (int64_t j = first; j < end; ++j) s[j] = fast_exp(s[j] - lse[ii]);
    std::fill(s + end, s + cols, 0.f);
  }
}

// The first key block a block of query rows [r0, r0 + rows) meets: block 0, or with positions the one
// holding the earliest document start among the rows.
int64_t first_key_block(int64_t r0, int64_t rows, const int32_t* positions) {
  if (positions == nullptr) return 0;
  int64_t first = r0;
  for (int64_t ii = 0; ii < rows; ++ii) first = std::min<int64_t>(first, r0 + ii - positions[ii]);
  return first / kKeyBlock * kKeyBlock;
}

// q, k or v as float32: the tensor itself, or its bfloat16 values widened (exactly) into `buffer`.
const float* as_f32(const Tensor& t, Tensor& buffer) {
  if (t.dtype() == DType::F32) return t.f32();
  buffer = Tensor::empty(t.shape());
  convert(buffer, t);
  return buffer.f32();
}

}  // namespace

void causal_attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t n_heads, int64_t seq_len, const Tensor* positions) {
  const int32_t* pos = document_positions("causal_attention_forward", positions, seq_len);
  const AttentionPairs pairs(q, n_heads, seq_len);
  const int64_t C = pairs.C, head_dim = pairs.head_dim, S = pairs.S;
  const int64_t query_blocks = (S + kQueryBlock - 1) / kQueryBlock, tasks = pairs.count * query_blocks;
  Tensor q32, k32, v32;
  const float* pq = as_f32(q, q32);
  const float* pk = as_f32(k, k32);
  const float* pv = as_f32(v, v32);
  float* pout = out.f32();
  float* plse = lse.f32();
  // Query block i costs i + 1 key blocks: dynamic scheduling evens the threads out. Each task's
  // result does not depend on the thread that runs it.
#pragma omp parallel for schedule(dynamic) if (parallel_attention(tasks, pairs.count, S, head_dim))
  for (int64_t task = 0; task < tasks; ++task) {
    thread_local BlockScratch scratch;
    const int64_t bh = task / query_blocks, offset = pairs.offset(bh);
    const int64_t r0 = (task % query_blocks) * kQueryBlock, r1 = std::min(S, r0 + kQueryBlock), rows = r1 - r0;
    const float* Q = pq + offset + r0 * C;
    const float* K = pk + offset;
    const float* V = pv + offset;
    float* O = pout + offset + r0 * C;  // the block's rows accumulate sum_j exp(s_ij - m_i) v_j here
    float* block_lse = plse + bh * S + r0;
    const int32_t* block_pos = pairs.positions(pos, bh, r0);
    float* scores = scratch.scores.data();
    float* row_max = scratch.row_max.data();
    float* row_sum = scratch.row_sum.data();
    float* correction = scratch.row_term.data();
    std::fill(row_max, row_max + rows, -INFINITY);
    std::fill(row_sum, row_sum + rows, 0.f);
    const int64_t first_c0 = first_key_block(r0, rows, block_pos);
    for (int64_t c0 = first_c0; c0 < r1; c0 += kKeyBlock) {
      const int64_t cols = std::min(r1, c0 + kKeyBlock) - c0;
      // scores (rows, cols) = scale Q[r0:r1] K[c0:c0+cols]^T
      gemm(false, true, rows, cols, head_dim, pairs.scale, Q, C, K + c0 * C, C, 0.f, scores, cols);
      online_softmax_block(scores, rows, cols, r0, c0, block_pos, row_max, row_sum, correction);
      if (c0 > first_c0)
        for (int64_t ii = 0; ii < rows; ++ii)
          if (correction[ii] != 1.f)
            for (int64_t c = 0; c < head_dim; ++c) O[ii * C + c] *= correction[ii];
      // O[r0:r1] (rows, Dh) (+)= exp-scores V[c0:c0+cols]; the first block overwrites.
      gemm(false, false, rows, head_dim, cols, 1.f, scores, cols, V + c0 * C, C, c0 == first_c0 ? 0.f : 1.f, O, C);
    }
    for (int64_t ii = 0; ii < rows; ++ii) {
      const float inv_sum = 1.f / row_sum[ii];  // row_sum >= 1: the max term is exp(0)
      for (int64_t c = 0; c < head_dim; ++c) O[ii * C + c] *= inv_sum;
      block_lse[ii] = row_max[ii] + std::log(row_sum[ii]);
    }
  }
}

// Per query block i and key block j <= i, with P_ij = exp(scale Q_i K_j^T - lse_i) (0 where masked),
// dP_ij = dO_i V_j^T, D_i = rowsum(dO_i * O_i) and dS_ij = P_ij * (dP_ij - D_i) (the softmax backward):
//   dV_j += P_ij^T dO_i;  dQ_i += scale dS_ij K_j;  dK_j += scale dS_ij^T Q_i.
// dK_j and dV_j collect from every query block i >= j, so a (sequence, head) pair's blocks run on one
// thread, in order, and the pairs in parallel.
void causal_attention_backward(Tensor* dq, Tensor* dk, Tensor* dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                               int64_t n_heads, int64_t seq_len, const Tensor* positions) {
  const int32_t* pos = document_positions("causal_attention_backward", positions, seq_len);
  const AttentionPairs pairs(q, n_heads, seq_len);
  const int64_t C = pairs.C, head_dim = pairs.head_dim, S = pairs.S;
  Tensor q32, k32, v32;
  const float* pq = as_f32(q, q32);
  const float* pk = as_f32(k, k32);
  const float* pv = as_f32(v, v32);
  const float* pout = out.f32();
  const float* plse = lse.f32();
  const float* pdout = dout.f32();
  float* pdq = dq ? dq->f32() : nullptr;
  float* pdk = dk ? dk->f32() : nullptr;
  float* pdv = dv ? dv->f32() : nullptr;
  const bool need_ds = pdq != nullptr || pdk != nullptr;
#pragma omp parallel for schedule(static) if (parallel_attention(pairs.count, pairs.count, S, head_dim))
  for (int64_t bh = 0; bh < pairs.count; ++bh) {
    thread_local BlockScratch scratch;
    float* P = scratch.scores.data();
    float* dS = P + kQueryBlock * kKeyBlock;
    float* D = scratch.row_term.data();
    const int64_t offset = pairs.offset(bh);
    for (int64_t r0 = 0; r0 < S; r0 += kQueryBlock) {
      const int64_t r1 = std::min(S, r0 + kQueryBlock), rows = r1 - r0;
      const float* Q = pq + offset + r0 * C;
      const float* dO = pdout + offset + r0 * C;
      const float* block_lse = plse + bh * S + r0;
      const int32_t* block_pos = pairs.positions(pos, bh, r0);
      if (need_ds)
        for (int64_t ii = 0; ii < rows; ++ii) {
          const float* o_row = pout + offset + (r0 + ii) * C;
          D[ii] = lane_sum(head_dim, [&](int64_t c) { return dO[ii * C + c] * o_row[c]; });
        }
      for (int64_t c0 = first_key_block(r0, rows, block_pos); c0 < r1; c0 += kKeyBlock) {
        const int64_t cols = std::min(r1, c0 + kKeyBlock) - c0;
        const float* K = pk + offset + c0 * C;
        const float* V = pv + offset + c0 * C;
        gemm(false, true, rows, cols, head_dim, pairs.scale, Q, C, K, C, 0.f, P, cols);
        recompute_probs_block(P, rows, cols, r0, c0, block_pos, block_lse);
        if (pdv != nullptr) gemm(true, false, cols, head_dim, rows, 1.f, P, cols, dO, C, 1.f, pdv + offset + c0 * C, C);
        if (!need_ds) continue;
        gemm(false, true, rows, cols, head_dim, 1.f, dO, C, V, C, 0.f, dS, cols);  // dP
        for (int64_t ii = 0; ii < rows; ++ii)
          for (int64_t j = 0; j < cols; ++j) dS[ii * cols + j] = P[ii * cols + j] * (dS[ii * cols + j] - D[ii]);
        if (pdq != nullptr)
          gemm(false, false, rows, head_dim, cols, pairs.scale, dS, cols, K, C, 1.f, pdq + offset + r0 * C, C);
        if (pdk != nullptr)
          gemm(true, false, cols, head_dim, rows, pairs.scale, dS, cols, Q, C, 1.f, pdk + offset + c0 * C, C);
      }
    }
  }
}

// ---- cached attention (inference) ----
// Per (new query row, head): the scores of the keys it sees, their softmax (the precise exp: there is no
// block structure to keep fast here, and it is what the reference computes) and the weighted sum of the
// values, in float32. A decode step has few rows, so the (row, head) pairs run in parallel.
void cached_attention_forward(Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              int64_t n_heads, int64_t past) {
  const int64_t B = k_cache.dim(0), T = k_cache.dim(1), C = k_cache.dim(2), n = q.dim(0) / B;
  const int64_t head_dim = C / n_heads, tasks = B * n * n_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  const float* pq = q.f32();
  const float* pk = k_cache.f32();
  const float* pv = v_cache.f32();
  float* po = out.f32();
#pragma omp parallel for if (tasks * (past + n) * head_dim >= kMinParallelElements)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t row = task / n_heads, h = task % n_heads, b = row / n, i = row % n;
    const int64_t seen = past + i + 1;  // cache rows [0, past + i]
    thread_local std::vector<float> scores;
    scores.resize(static_cast<size_t>(seen));
    const float* qh = pq + row * C + h * head_dim;
    const float* keys = pk + b * T * C + h * head_dim;
    const float* values = pv + b * T * C + h * head_dim;
    float max_score = -INFINITY;
    for (int64_t j = 0; j < seen; ++j) {
      float dot = 0.f;
      for (int64_t c = 0; c < head_dim; ++c) dot += qh[c] * keys[j * C + c];
      scores[j] = dot * scale;
      max_score = std::max(max_score, scores[j]);
    }
    float sum = 0.f;
    for (int64_t j = 0; j < seen; ++j) {
      scores[j] = std::exp(scores[j] - max_score);
      sum += scores[j];
    }
    float* oh = po + row * C + h * head_dim;
    std::fill(oh, oh + head_dim, 0.f);
    for (int64_t j = 0; j < seen; ++j) {
      const float p = scores[j] / sum;
      for (int64_t c = 0; c < head_dim; ++c) oh[c] += p * values[j * C + c];
    }
  }
}

}  // namespace moe::cpu
