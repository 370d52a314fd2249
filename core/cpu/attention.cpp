// CPU attention ops, forward and backward side by side: rotary position embedding and causal
// multi-head self-attention (GEMMs per sequence and head, in parallel over them).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/cpu/fast_math.h"
#include "core/cpu/gemm.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

namespace {

// ---- rotary tables ----

// cos and sin of s * theta^(-2i / Dh) for s in [0, S), i in [0, Dh/2), row-major (S, Dh/2).
struct RotaryTable {
  int64_t seq_len = -1, head_dim = -1;
  float theta = 0.f;
  std::vector<float> cos, sin;
};

// The table for these settings, cached per thread: a run calls with the same (S, Dh, theta) in every
// layer and step, and the S * Dh / 2 sin/cos pairs would otherwise cost about as much as the rotation.
// Angles are formed and evaluated in double: s * freq reaches thousands of radians, where a float32
// angle would be off by ~1e-4 rad.
const RotaryTable& rotary_table(int64_t seq_len, int64_t head_dim, float theta) {
  thread_local RotaryTable table;
  if (table.seq_len == seq_len && table.head_dim == head_dim && table.theta == theta) return table;
  const int64_t half = head_dim / 2;
  table.cos.resize(static_cast<size_t>(seq_len * half));
  table.sin.resize(static_cast<size_t>(seq_len * half));
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / head_dim);
    for (int64_t s = 0; s < seq_len; ++s) {
      const double angle = static_cast<double>(s) * freq;
      table.cos[s * half + i] = static_cast<float>(std::cos(angle));
      table.sin[s * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  table.seq_len = seq_len;
  table.head_dim = head_dim;
  table.theta = theta;
  return table;
}

// Calls pair(out + j, in + j, cos, sin) for the first column j = 2i of each column pair (2i, 2i + 1) of
// each head of each row of in, out (N, C = H*Dh), with the cos and sin of row n's position n % S.
template <typename PairFn>
void for_each_rotary_pair(float* out, const float* in, int64_t N, int64_t C, int64_t n_heads, int64_t seq_len,
                          float theta, PairFn pair) {
  const int64_t head_dim = C / n_heads, half = head_dim / 2;
  const RotaryTable& table = rotary_table(seq_len, head_dim, theta);
  const float* pcos = table.cos.data();
  const float* psin = table.sin.data();
#pragma omp parallel for if (N * C >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const float* c = pcos + (n % seq_len) * half;
    const float* s = psin + (n % seq_len) * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      const float* in_h = in + n * C + h * head_dim;
      float* out_h = out + n * C + h * head_dim;
      for (int64_t i = 0; i < half; ++i) pair(out_h + 2 * i, in_h + 2 * i, c[i], s[i]);
    }
  }
}

// ---- attention ----

// Query rows are processed in blocks of this many: block [r0, r1) attends to keys [0, r1) only, so
// the GEMMs skip most of the masked upper triangle (about half the work for long sequences) while
// staying large enough to run at GEMM speed.
constexpr int64_t kRowBlock = 64;

// The (sequence, head) pairs run in parallel, each with single-threaded GEMMs (the provider runs
// serially inside a parallel region), when there are several pairs and enough work for a team; a
// single pair leaves the threads to the GEMMs.
bool parallel_over_pairs(int64_t pairs, int64_t seq_len, int64_t head_dim) {
  return pairs > 1 && pairs * seq_len * seq_len * head_dim >= kMinParallelElements;
}

// The B*H (sequence, head) pairs of one causal attention call on q, k, v (B*S, C = H*Dh), each an
// (S, Dh) column block of the token rows; and the score scale 1 / sqrt(Dh).
struct AttentionPairs {
  AttentionPairs(const Tensor& q, int64_t heads, int64_t seq_len)
      : C(q.dim(1)), head_dim(C / heads), S(seq_len), n_heads(heads), count((q.dim(0) / seq_len) * heads),
        scale(1.f / std::sqrt(static_cast<float>(head_dim))) {}
  // Where pair bh's block starts in the token rows: row b * S, column h * Dh.
  int64_t offset(int64_t bh) const { return (bh / n_heads) * S * C + (bh % n_heads) * head_dim; }
  int64_t C, head_dim, S, n_heads, count;
  float scale;
};

// Row i of scores (its first i + 1 entries valid) becomes softmax over j <= i, zero for j in (i, S).
void causal_softmax_row(float* row, int64_t i, int64_t seq_len) {
  float row_max = row[0];
  for (int64_t j = 1; j <= i; ++j) row_max = std::max(row_max, row[j]);
  float sum = 0.f;
  for (int64_t j = 0; j <= i; ++j) {
    row[j] = fast_exp(row[j] - row_max);
    sum += row[j];
  }
  const float inv_sum = 1.f / sum;  // sum >= 1: the max term is exp(0)
  for (int64_t j = 0; j <= i; ++j) row[j] *= inv_sum;
  for (int64_t j = i + 1; j < seq_len; ++j) row[j] = 0.f;
}

}  // namespace

// ---- rotary position embedding: x, y, dx, dy (B*S, H*Dh); row n is position n % S ----

// (y0, y1) = (x0 cos - x1 sin, x0 sin + x1 cos) for each pair; both inputs are read before either
// output is written, so y may be x.
void rotary_forward(Tensor& y, const Tensor& x, int64_t n_heads, int64_t seq_len, float theta) {
  for_each_rotary_pair(y.f32(), x.f32(), x.dim(0), x.dim(1), n_heads, seq_len, theta,
                       [](float* y_pair, const float* x_pair, float c, float s) {
                         const float x0 = x_pair[0], x1 = x_pair[1];
                         y_pair[0] = x0 * c - x1 * s;
                         y_pair[1] = x0 * s + x1 * c;
                       });
}

// The transpose (inverse) rotation: (dx0, dx1) += (dy0 cos + dy1 sin, -dy0 sin + dy1 cos).
void rotary_backward(Tensor& dx, const Tensor& dy, int64_t n_heads, int64_t seq_len, float theta) {
  for_each_rotary_pair(dx.f32(), dy.f32(), dy.dim(0), dy.dim(1), n_heads, seq_len, theta,
                       [](float* dx_pair, const float* dy_pair, float c, float s) {
                         const float dy0 = dy_pair[0], dy1 = dy_pair[1];
                         dx_pair[0] += dy0 * c + dy1 * s;
                         dx_pair[1] += -dy0 * s + dy1 * c;
                       });
}

// ---- causal attention ----
// Per (b, h): Q, K, V, O are (S, Dh) strided views (row stride C = H * Dh) starting at row b * S,
// column h * Dh; P = probs[b, h] (S, S).
//   P = causal_softmax(Q K^T / sqrt(Dh));  O = P V.

void causal_attention_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t n_heads, int64_t seq_len) {
  const AttentionPairs pairs(q, n_heads, seq_len);
  const int64_t C = pairs.C, head_dim = pairs.head_dim, S = pairs.S;
  const float* pq = q.f32();
  const float* pk = k.f32();
  const float* pv = v.f32();
  float* pout = out.f32();
  float* pprobs = probs.f32();
#pragma omp parallel for schedule(static) if (parallel_over_pairs(pairs.count, S, head_dim))
  for (int64_t bh = 0; bh < pairs.count; ++bh) {
    const int64_t offset = pairs.offset(bh);
    const float* Q = pq + offset;
    const float* K = pk + offset;
    const float* V = pv + offset;
    float* O = pout + offset;
    float* P = pprobs + bh * S * S;
    for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) {
      const int64_t r1 = std::min(S, r0 + kRowBlock), rows = r1 - r0;
      // P[r0:r1, 0:r1] (rows, r1) = scale * Q[r0:r1] K[0:r1]^T
      gemm(false, true, rows, r1, head_dim, pairs.scale, Q + r0 * C, C, K, C, 0.f, P + r0 * S, S);
      for (int64_t i = r0; i < r1; ++i) causal_softmax_row(P + i * S, i, S);
      // O[r0:r1] (rows, Dh) = P[r0:r1, 0:r1] V[0:r1]
      gemm(false, false, rows, head_dim, r1, 1.f, P + r0 * S, S, V, C, 0.f, O + r0 * C, C);
    }
  }
}

// With dP = dO V^T and dS = P * (dP - rowsum(dP * P)) (the softmax backward, zero where P is masked):
//   dQ += scale dS K;  dK += scale dS^T Q;  dV += P^T dO.
void causal_attention_backward(Tensor* dq, Tensor* dk, Tensor* dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& probs, int64_t n_heads,
                               int64_t seq_len) {
  const AttentionPairs pairs(q, n_heads, seq_len);
  const int64_t C = pairs.C, head_dim = pairs.head_dim, S = pairs.S;
  const float* pq = q.f32();
  const float* pk = k.f32();
  const float* pv = v.f32();
  const float* pdout = dout.f32();
  const float* pprobs = probs.f32();
  float* pdq = dq ? dq->f32() : nullptr;
  float* pdk = dk ? dk->f32() : nullptr;
  float* pdv = dv ? dv->f32() : nullptr;
  const bool need_ds = pdq != nullptr || pdk != nullptr;
#pragma omp parallel for schedule(static) if (parallel_over_pairs(pairs.count, S, head_dim))
  for (int64_t bh = 0; bh < pairs.count; ++bh) {
    // dS of one row block (rows, r1), in this thread's own buffer, kept between calls.
    thread_local std::vector<float> ds_buffer;
    if (need_ds && ds_buffer.size() < static_cast<size_t>(std::min(S, kRowBlock) * S))
      ds_buffer.resize(static_cast<size_t>(std::min(S, kRowBlock) * S));
    float* dS = ds_buffer.data();
    const int64_t offset = pairs.offset(bh);
    const float* Q = pq + offset;
    const float* K = pk + offset;
    const float* V = pv + offset;
    const float* dO = pdout + offset;
    const float* P = pprobs + bh * S * S;
    for (int64_t r0 = 0; r0 < S; r0 += kRowBlock) {
      const int64_t r1 = std::min(S, r0 + kRowBlock), rows = r1 - r0;
      const float* P_block = P + r0 * S;  // (rows, r1) with row stride S
      // dV[0:r1] += P[r0:r1, 0:r1]^T dO[r0:r1]
      if (pdv != nullptr)
        gemm(true, false, r1, head_dim, rows, 1.f, P_block, S, dO + r0 * C, C, 1.f, pdv + offset, C);
      if (!need_ds) continue;
      // dS (rows, r1) = dO[r0:r1] V[0:r1]^T, then the softmax backward row by row.
      gemm(false, true, rows, r1, head_dim, 1.f, dO + r0 * C, C, V, C, 0.f, dS, r1);
      for (int64_t i = r0; i < r1; ++i) {
        float* ds_row = dS + (i - r0) * r1;
        const float* p_row = P + i * S;
        float dot = 0.f;
        for (int64_t j = 0; j <= i; ++j) dot += ds_row[j] * p_row[j];
        for (int64_t j = 0; j <= i; ++j) ds_row[j] = p_row[j] * (ds_row[j] - dot);
        for (int64_t j = i + 1; j < r1; ++j) ds_row[j] = 0.f;
      }
      // dQ[r0:r1] += scale dS K[0:r1];  dK[0:r1] += scale dS^T Q[r0:r1]
      if (pdq != nullptr)
        gemm(false, false, rows, head_dim, r1, pairs.scale, dS, r1, K, C, 1.f, pdq + offset + r0 * C, C);
      if (pdk != nullptr)
        gemm(true, false, r1, head_dim, rows, pairs.scale, dS, r1, Q + r0 * C, C, 1.f, pdk + offset, C);
    }
  }
}

}  // namespace moe::cpu
