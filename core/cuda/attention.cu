// CUDA attention ops, forward and backward side by side: rotary position embedding and causal
// multi-head self-attention (cuBLAS products over blocks of query rows; no (S, S) matrix per head kept).
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/backend.h"
#include "core/check.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/gemm.h"
#include "core/cuda/index_check.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

namespace {

// cos and sin of the angle s * theta^(-2i / Dh), formed and evaluated in double as the CPU's table is
// (s * freq reaches thousands of radians, where a float32 angle would be off by ~1e-4 rad).
__device__ void rotary_angle(int64_t s, int64_t i, int64_t head_dim, float theta, float* c, float* sn) {
  const double angle = static_cast<double>(s) * pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / head_dim);
  *c = static_cast<float>(cos(angle));
  *sn = static_cast<float>(sin(angle));
}

// The document positions on the device (checked: 0 <= positions[n] <= n % S), or null without them.
const int32_t* document_positions(const char* op, const Tensor* positions, int64_t seq_len) {
  if (positions == nullptr) return nullptr;
  require_document_positions(op, *positions, seq_len);
  return i32(op, *positions);
}

}  // namespace

// ---- rotary position embedding: x, y, dx, dy (B*S, H*Dh); row n is position n % S or positions[n] ----

// (y0, y1) = (x0 cos - x1 sin, x0 sin + x1 cos) for each pair; a thread reads both inputs of its pair
// before writing either output, so y may be x.
void rotary_forward(Tensor& y, const Tensor& x, int64_t n_heads, int64_t seq_len, float theta,
                    const Tensor* positions, int64_t position_offset) {
  const char* op = "rotary_forward";
  const int64_t C = x.dim(1), head_dim = C / n_heads;
  const int32_t* pos = document_positions(op, positions, seq_len);
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, x.numel() / 2, [=] __device__(int64_t p) {  // p: the pair (2p, 2p + 1) of the flat tensor
    const int64_t n = (2 * p) / C, i = ((2 * p) % C) % head_dim / 2;
    float c, s;
    rotary_angle(position_offset + (pos != nullptr ? pos[n] : n % seq_len), i, head_dim, theta, &c, &s);
    const float x0 = px[2 * p], x1 = px[2 * p + 1];
    py[2 * p] = x0 * c - x1 * s;
    py[2 * p + 1] = x0 * s + x1 * c;
  });
}

// The transpose (inverse) rotation: (dx0, dx1) += (dy0 cos + dy1 sin, -dy0 sin + dy1 cos).
void rotary_backward(Tensor& dx, const Tensor& dy, int64_t n_heads, int64_t seq_len, float theta,
                     const Tensor* positions) {
  const char* op = "rotary_backward";
  const int64_t C = dy.dim(1), head_dim = C / n_heads;
  const int32_t* pos = document_positions(op, positions, seq_len);
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each(op, dy.numel() / 2, [=] __device__(int64_t p) {
    const int64_t n = (2 * p) / C, i = ((2 * p) % C) % head_dim / 2;
    float c, s;
    rotary_angle(pos != nullptr ? pos[n] : n % seq_len, i, head_dim, theta, &c, &s);
    const float dy0 = pdy[2 * p], dy1 = pdy[2 * p + 1];
    pdx[2 * p] += dy0 * c + dy1 * s;
    pdx[2 * p + 1] += -dy0 * s + dy1 * c;
  });
}

// ---- causal attention ----
// Per (b, h): Q, K, V, O are (S, Dh) strided views (row stride C = H * Dh) from row b * S, column
// h * Dh, and lse[b, h] is (S).  P = causal_softmax(scale Q K^T);  O = P V; with document positions
// query i sees keys [i - positions[b*S + i], i] only (first_key), the others masked as the future is.
// Each sequence is taken in blocks of R query rows [r0, r0 + R), all heads at once, and a block meets
// only the keys it can see, [0, r0 + R):
//   forward:  Sc = scale Q_blk K^T (one batched GEMM over the heads, float32 scores), P = the causal
//             softmax of each row (lse kept), O_blk = P V (batched GEMM);
//   backward: Sc again, P = exp(Sc - lse), dV += P^T dO_blk, dP = dO_blk V^T, dS = P * (dP - D) with
//             D = rowsum(dO * O), dQ_blk += scale dS K, dK += scale dS^T Q_blk.
// The products run through cuBLAS (gemm.h's gemm_batched) on the inputs' dtype: float32 or bfloat16,
// float32 sums either way. With bfloat16 inputs the products' other operands are bfloat16 too (P, dS and
// dO are rounded to bfloat16 before the products that read them, as FlashAttention's tensor-core
// products do); scores, softmax, lse and D stay float32. A block's scores, dP and P live in the
// backend's scratch buffer, at most kScoreElements each: memory O(H * R * S), not O(B * H * S * S).
// Every gradient element is written by a fixed sequence of GEMMs (no atomics): the same bits each run.

namespace {

constexpr int64_t kScoreElements = int64_t{1} << 25;  // scores of one block: 128 MiB of float32

// Query rows per block: as many as keep H x R x S scores within kScoreElements, a multiple of 64 from 64
// rows up (at least one row), at most S.
int64_t rows_per_block(int64_t H, int64_t S) {
  const int64_t r = std::max<int64_t>(1, kScoreElements / std::max<int64_t>(1, H * S));
  return std::min(S, r >= 64 ? r / 64 * 64 : r);
}

// Stores v in a products' input element: float32, or bfloat16 rounded to nearest even.
__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

int64_t aligned_bytes(int64_t count, int64_t size) { return (count * size + 255) / 256 * 256; }

// Regions carved from the backend's one scratch buffer, each 256-byte aligned.
struct ScratchCarver {
  char* base;
  int64_t used = 0;
  template <class T>
  T* take(int64_t count) {
    T* p = reinterpret_cast<T*>(base + used);
    used += aligned_bytes(count, sizeof(T));
    return p;
  }
};

// The first key that query row `last` of sequence b sees: 0, or its document's first token.
__device__ inline int64_t first_key(const int32_t* pos, int64_t b, int64_t S, int64_t last) {
  return pos != nullptr ? last - pos[b * S + last] : 0;
}

// One block of query rows of one sequence.
struct QueryBlock {
  int64_t b, r0, rows, keys;  // sequence, first row, rows, keys seen: [0, keys) = [0, r0 + rows)
};

// The attention's inputs; T is float for float32 inputs, __nv_bfloat16 for bfloat16 ones.
template <class T>
struct Attention {
  const char* op;
  int64_t H, S, C, Dh;
  float scale;
  const T *q, *k, *v;  // (B*S, C)
  const int32_t* pos;   // (B*S) document positions, or null

  // Row `row` of sequence blk.b in x, head 0 (the batched GEMMs step Dh columns per head).
  const T* rows_of(const T* x, const QueryBlock& blk, int64_t row) const { return x + (blk.b * S + row) * C; }
  DType dtype() const { return std::is_same_v<T, float> ? DType::F32 : DType::BF16; }

  // sc (H, rows, keys) = scale Q_blk K^T.
  void scores(const QueryBlock& blk, float* sc) const {
    gemm_batched(op, dtype(), false, true, blk.rows, blk.keys, Dh, scale, rows_of(q, blk, blk.r0), C, Dh,
                 rows_of(k, blk, 0), C, Dh, 0.f, sc, blk.keys, blk.rows * blk.keys, H);
  }
};

// p (H, rows, keys) = the causal softmax of each score row, 0 for keys the query does not see; each
// row's log-sum-exp into lse (B, H, S). One block of threads per row.
template <class T>
void softmax_rows(const char* op, const QueryBlock& blk, int64_t H, int64_t S, const int32_t* pos, const float* sc,
                  T* p, float* lse) {
  const int64_t rows = blk.rows, keys = blk.keys, b = blk.b, r0 = blk.r0;
  for_each_row(op, H * rows, [=] __device__(int64_t g) {  // g = h rows + i
    const int64_t i = g % rows, h = g / rows, last = r0 + i;  // the query sees keys [first, last]
    const int64_t first = first_key(pos, b, S, last);
    const float* s = sc + g * keys;
    float m = -INFINITY;
    for (int64_t j = first + threadIdx.x; j <= last; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_max(m);
    float l = 0.f;
    for (int64_t j = first + threadIdx.x; j <= last; j += blockDim.x) l += expf(s[j] - m);
    l = block_sum(l);
    const float inv = 1.f / l;
    for (int64_t j = threadIdx.x; j < keys; j += blockDim.x)
      store(p + g * keys + j, j >= first && j <= last ? expf(s[j] - m) * inv : 0.f);
    if (threadIdx.x == 0) lse[(b * H + h) * S + last] = m + logf(l);
  });
}

// The backward's probabilities from the kept lse: p = exp(sc - lse), 0 for keys the query does not see.
template <class T>
void probs_from_lse(const char* op, const QueryBlock& blk, int64_t H, int64_t S, const int32_t* pos, const float* sc,
                    const float* lse, T* p) {
  const int64_t rows = blk.rows, keys = blk.keys, b = blk.b, r0 = blk.r0;
  for_each(op, H * rows * keys, [=] __device__(int64_t e) {
    const int64_t g = e / keys, j = e % keys, i = g % rows, h = g / rows;
    const bool seen = j >= first_key(pos, b, S, r0 + i) && j <= r0 + i;
    store(p + e, seen ? expf(sc[e] - lse[(b * H + h) * S + r0 + i]) : 0.f);
  });
}

// ds = p (dp - D) with p recomputed from sc and lse, 0 for keys the query does not see.
template <class T>
void softmax_backward_rows(const char* op, const QueryBlock& blk, int64_t H, int64_t S, const int32_t* pos,
                           const float* sc, const float* dp, const float* lse, const float* D, T* ds) {
  const int64_t rows = blk.rows, keys = blk.keys, b = blk.b, r0 = blk.r0;
  for_each(op, H * rows * keys, [=] __device__(int64_t e) {
    const int64_t g = e / keys, j = e % keys, i = g % rows, h = g / rows, row = (b * H + h) * S + r0 + i;
    const bool seen = j >= first_key(pos, b, S, r0 + i) && j <= r0 + i;
    store(ds + e, seen ? expf(sc[e] - lse[row]) * (dp[e] - D[row]) : 0.f);
  });
}

template <class T>
void attention_forward(const Attention<T>& a, float* out, float* lse, int64_t B) {
  const int64_t R = rows_per_block(a.H, a.S), block = a.H * R * a.S;
  ScratchCarver scratch{static_cast<char*>(
      scratch_buffer(a.op, aligned_bytes(block, sizeof(float)) + aligned_bytes(block, sizeof(T))))};
  float* sc = scratch.take<float>(block);
  T* p = scratch.take<T>(block);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r0 = 0; r0 < a.S; r0 += R) {
      const QueryBlock blk{b, r0, std::min(R, a.S - r0), std::min(a.S, r0 + R)};
      a.scores(blk, sc);
      softmax_rows(a.op, blk, a.H, a.S, a.pos, sc, p, lse);
      gemm_batched(a.op, a.dtype(), false, false, blk.rows, a.Dh, blk.keys, 1.f, p, blk.keys, blk.rows * blk.keys,
                   a.rows_of(a.v, blk, 0), a.C, a.Dh, 0.f, out + (b * a.S + r0) * a.C, a.C, a.Dh, a.H);
    }
}

template <class T>
void attention_backward(const Attention<T>& a, float* dq, float* dk, float* dv, const float* dout, const float* out,
                        const float* lse, int64_t B) {
  const int64_t H = a.H, S = a.S, C = a.C, Dh = a.Dh, N = B * S;
  const int64_t R = rows_per_block(H, S), block = H * R * S;
  ScratchCarver scratch{static_cast<char*>(scratch_buffer(
      a.op, aligned_bytes(B * H * S, sizeof(float)) + aligned_bytes(N * C, sizeof(T)) +
                2 * aligned_bytes(block, sizeof(float)) + aligned_bytes(block, sizeof(T))))};
  float* D = scratch.take<float>(B * H * S);
  T* dout_in = scratch.take<T>(N * C);  // dO as the products read it
  float* sc = scratch.take<float>(block);
  float* dp = scratch.take<float>(block);
  T* p = scratch.take<T>(block);  // P, then dS
  // D (B, H, S) = rowsum(dO * O) per query and head: the softmax backward's row term.
  for_each(a.op, B * H * S, [=] __device__(int64_t e) {  // e = (b H + h) S + i, lse's layout
    const int64_t row = (e / (H * S) * S + e % S) * C + (e / S) % H * Dh;
    float sum = 0.f;
    for (int64_t c = 0; c < Dh; ++c) sum += dout[row + c] * out[row + c];
    D[e] = sum;
  });
  for_each(a.op, N * C, [=] __device__(int64_t e) { store(dout_in + e, dout[e]); });
  const DType t = a.dtype();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r0 = 0; r0 < S; r0 += R) {
      const QueryBlock blk{b, r0, std::min(R, S - r0), std::min(S, r0 + R)};
      const int64_t rows = blk.rows, keys = blk.keys, stride = rows * keys;
      const T* dout_blk = dout_in + (b * S + r0) * C;
      a.scores(blk, sc);
      if (dv != nullptr) {
        probs_from_lse(a.op, blk, H, S, a.pos, sc, lse, p);
        gemm_batched(a.op, t, true, false, keys, Dh, rows, 1.f, p, keys, stride, dout_blk, C, Dh, 1.f,
                     dv + b * S * C, C, Dh, H);
      }
      if (dq == nullptr && dk == nullptr) continue;
      gemm_batched(a.op, t, false, true, rows, keys, Dh, 1.f, dout_blk, C, Dh, a.rows_of(a.v, blk, 0), C, Dh, 0.f,
                   dp, keys, stride, H);
      softmax_backward_rows(a.op, blk, H, S, a.pos, sc, dp, lse, D, p);
      if (dq != nullptr)
        gemm_batched(a.op, t, false, false, rows, Dh, keys, a.scale, p, keys, stride, a.rows_of(a.k, blk, 0), C,
                     Dh, 1.f, dq + (b * S + r0) * C, C, Dh, H);
      if (dk != nullptr)
        gemm_batched(a.op, t, true, false, keys, Dh, rows, a.scale, p, keys, stride, a.rows_of(a.q, blk, r0), C,
                     Dh, 1.f, dk + b * S * C, C, Dh, H);
    }
}

// Calls run(attention) with the float32 or bfloat16 instance for q, k and v (one dtype, checked).
template <class Run>
void for_input_dtype(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, int64_t n_heads,
                     int64_t seq_len, const Tensor* positions, Run run) {
  const int64_t C = q.dim(1), Dh = C / n_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
  const int32_t* pos = document_positions(op, positions, seq_len);
  if (q.dtype() == DType::BF16) {
    auto in = [&](const Tensor& t) { return reinterpret_cast<const __nv_bfloat16*>(bf16(op, t)); };
    run(Attention<__nv_bfloat16>{op, n_heads, seq_len, C, Dh, scale, in(q), in(k), in(v), pos});
  } else {
    run(Attention<float>{op, n_heads, seq_len, C, Dh, scale, f32(op, q), f32(op, k), f32(op, v), pos});
  }
}

}  // namespace

void causal_attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t n_heads, int64_t seq_len, const Tensor* positions) {
  const char* op = "causal_attention_forward";
  float *pout = f32(op, out), *plse = f32(op, lse);
  const int64_t B = q.dim(0) / seq_len;
  for_input_dtype(op, q, k, v, n_heads, seq_len, positions,
                  [&](const auto& a) { attention_forward(a, pout, plse, B); });
}

void causal_attention_backward(Tensor* dq, Tensor* dk, Tensor* dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                               int64_t n_heads, int64_t seq_len, const Tensor* positions) {
  const char* op = "causal_attention_backward";
  float* pdq = dq ? f32(op, *dq) : nullptr;
  float* pdk = dk ? f32(op, *dk) : nullptr;
  float* pdv = dv ? f32(op, *dv) : nullptr;
  const float *pdout = f32(op, dout), *pout = f32(op, out), *plse = f32(op, lse);
  const int64_t B = q.dim(0) / seq_len;
  for_input_dtype(op, q, k, v, n_heads, seq_len, positions,
                  [&](const auto& a) { attention_backward(a, pdq, pdk, pdv, pdout, pout, plse, B); });
}

// ---- cached attention (inference) ----
// One block per (new query row, head), in chunks of rows whose scores fit kScoreElements of the scratch
// buffer: the block's threads take the keys it sees in turn (scores, then the block's max), then the
// exponentials and their block sum, then the columns of its output (the weighted sum of the values,
// each thread a column, the keys in order).
void cached_attention_forward(Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              int64_t n_heads, int64_t past) {
  const char* op = "cached_attention_forward";
  const int64_t B = k_cache.dim(0), T = k_cache.dim(1), C = k_cache.dim(2), n = q.dim(0) / B;
  const int64_t head_dim = C / n_heads, keys = past + n;  // the most keys a query sees
  const float scale = 1.f / sqrtf(static_cast<float>(head_dim));
  const float* pq = f32(op, q);
  const float* pk = f32(op, k_cache);
  const float* pv = f32(op, v_cache);
  float* po = f32(op, out);
  const int64_t pairs = B * n * n_heads;
  const int64_t chunk = std::max<int64_t>(1, kScoreElements / keys);
  float* scores = static_cast<float*>(scratch_buffer(op, std::min(pairs, chunk) * keys * int64_t{sizeof(float)}));
  for (int64_t first = 0; first < pairs; first += chunk) {
    const int64_t count = std::min(chunk, pairs - first);
    for_each_row(op, count, [=] __device__(int64_t r) {
      const int64_t task = first + r, row = task / n_heads, h = task % n_heads, b = row / n;
      const int64_t seen = past + row % n + 1;  // cache rows [0, past + i]
      const float* qh = pq + row * C + h * head_dim;
      const float* kh = pk + b * T * C + h * head_dim;
      const float* vh = pv + b * T * C + h * head_dim;
      float* sc = scores + r * keys;
      float local_max = -INFINITY;
      for (int64_t j = threadIdx.x; j < seen; j += blockDim.x) {
        float dot = 0.f;
        for (int64_t c = 0; c < head_dim; ++c) dot += qh[c] * kh[j * C + c];
        sc[j] = dot * scale;
        local_max = fmaxf(local_max, sc[j]);
      }
      const float max_score = block_max(local_max);
      float local_sum = 0.f;
      for (int64_t j = threadIdx.x; j < seen; j += blockDim.x) {
        sc[j] = expf(sc[j] - max_score);
        local_sum += sc[j];
      }
      const float sum = block_sum(local_sum);  // its __syncthreads also orders the writes of sc before the reads
      for (int64_t c = threadIdx.x; c < head_dim; c += blockDim.x) {
        float acc = 0.f;
        for (int64_t j = 0; j < seen; ++j) acc += sc[j] * vh[j * C + c];
        po[row * C + h * head_dim + c] = acc / sum;
      }
    });
  }
}

}  // namespace moe::cuda
