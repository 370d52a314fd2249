// CUDA attention ops, forward and backward side by side: rotary position embedding and causal
// multi-head self-attention (cuBLAS products batched over the heads of a sequence, kernels for the
// causal softmax and its backward).
#include <cmath>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/gemm.h"
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

// Row i of a (S, S) score matrix becomes softmax over j <= i, zero for j in (i, S). A block per row;
// rows are numbered over all (b, h) pairs, row r being query r % S.
void causal_softmax_rows(const char* op, float* P, int64_t rows, int64_t S) {
  for_each_row(op, rows, [=] __device__(int64_t r) {
    float* row = P + r * S;
    const int64_t i = r % S;
    float row_max = -INFINITY;
    for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) row_max = fmaxf(row_max, row[j]);
    row_max = block_max(row_max);
    float sum = 0.f;
    for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) {
      row[j] = expf(row[j] - row_max);
      sum += row[j];
    }
    const float inv_sum = 1.f / block_sum(sum);  // sum >= 1: the max term is exp(0)
    for (int64_t j = threadIdx.x; j < S; j += blockDim.x) row[j] = j <= i ? row[j] * inv_sum : 0.f;
  });
}

}  // namespace

// ---- rotary position embedding: x, y, dx, dy (B*S, H*Dh); row n is position n % S ----

// (y0, y1) = (x0 cos - x1 sin, x0 sin + x1 cos) for each pair; a thread reads both inputs of its pair
// before writing either output, so y may be x.
void rotary_forward(Tensor& y, const Tensor& x, int64_t n_heads, int64_t seq_len, float theta) {
  const char* op = "rotary_forward";
  const int64_t C = x.dim(1), head_dim = C / n_heads;
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, x.numel() / 2, [=] __device__(int64_t p) {  // p: the pair (2p, 2p + 1) of the flat tensor
    const int64_t n = (2 * p) / C, i = ((2 * p) % C) % head_dim / 2;
    float c, s;
    rotary_angle(n % seq_len, i, head_dim, theta, &c, &s);
    const float x0 = px[2 * p], x1 = px[2 * p + 1];
    py[2 * p] = x0 * c - x1 * s;
    py[2 * p + 1] = x0 * s + x1 * c;
  });
}

// The transpose (inverse) rotation: (dx0, dx1) += (dy0 cos + dy1 sin, -dy0 sin + dy1 cos).
void rotary_backward(Tensor& dx, const Tensor& dy, int64_t n_heads, int64_t seq_len, float theta) {
  const char* op = "rotary_backward";
  const int64_t C = dy.dim(1), head_dim = C / n_heads;
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each(op, dy.numel() / 2, [=] __device__(int64_t p) {
    const int64_t n = (2 * p) / C, i = ((2 * p) % C) % head_dim / 2;
    float c, s;
    rotary_angle(n % seq_len, i, head_dim, theta, &c, &s);
    const float dy0 = pdy[2 * p], dy1 = pdy[2 * p + 1];
    pdx[2 * p] += dy0 * c + dy1 * s;
    pdx[2 * p + 1] += -dy0 * s + dy1 * c;
  });
}

// ---- causal attention ----
// Per (b, h): Q, K, V, O are (S, Dh) strided views (row stride C = H * Dh) starting at row b * S,
// column h * Dh; P = probs[b, h] (S, S). One batched product per sequence covers its H heads (head h
// of Q at column h * Dh, of P at h * S * S).
//   P = causal_softmax(Q K^T / sqrt(Dh));  O = P V.
// The products run over the full (S, S) square; the masked entries of P are exactly 0, so they add
// nothing.

void causal_attention_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t n_heads, int64_t seq_len) {
  const char* op = "causal_attention_forward";
  const int64_t N = q.dim(0), C = q.dim(1), H = n_heads, Dh = C / H, S = seq_len, B = N / S;
  const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
  const float* pq = f32(op, q);
  const float* pk = f32(op, k);
  const float* pv = f32(op, v);
  float* pout = f32(op, out);
  float* pprobs = f32(op, probs);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t rows = b * S * C;
    float* P = pprobs + b * H * S * S;
    gemm_batched(op, false, true, S, S, Dh, scale, pq + rows, C, Dh, pk + rows, C, Dh, 0.f, P, S, S * S, H);
  }
  causal_softmax_rows(op, pprobs, B * H * S, S);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t rows = b * S * C;
    gemm_batched(op, false, false, S, Dh, S, 1.f, pprobs + b * H * S * S, S, S * S, pv + rows, C, Dh, 0.f,
                 pout + rows, C, Dh, H);
  }
}

// With dP = dO V^T and dS = P * (dP - rowsum(dP * P)) (the softmax backward, zero where P is masked):
//   dQ += scale dS K;  dK += scale dS^T Q;  dV += P^T dO.
// dS of one sequence's H heads (H, S, S) lives in the scratch buffer.
void causal_attention_backward(Tensor* dq, Tensor* dk, Tensor* dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& probs, int64_t n_heads,
                               int64_t seq_len) {
  const char* op = "causal_attention_backward";
  const int64_t N = q.dim(0), C = q.dim(1), H = n_heads, Dh = C / H, S = seq_len, B = N / S;
  const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
  const float* pq = f32(op, q);
  const float* pk = f32(op, k);
  const float* pv = f32(op, v);
  const float* pdout = f32(op, dout);
  const float* pprobs = f32(op, probs);
  float* pdq = dq ? f32(op, *dq) : nullptr;
  float* pdk = dk ? f32(op, *dk) : nullptr;
  float* pdv = dv ? f32(op, *dv) : nullptr;
  const bool need_ds = pdq != nullptr || pdk != nullptr;
  float* dS = need_ds ? static_cast<float*>(scratch_buffer(op, H * S * S * int64_t{sizeof(float)})) : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t rows = b * S * C;
    const float* P = pprobs + b * H * S * S;
    if (pdv != nullptr)  // dV += P^T dO
      gemm_batched(op, true, false, S, Dh, S, 1.f, P, S, S * S, pdout + rows, C, Dh, 1.f, pdv + rows, C, Dh, H);
    if (!need_ds) continue;
    // dS = dO V^T, then the softmax backward row by row.
    gemm_batched(op, false, true, S, S, Dh, 1.f, pdout + rows, C, Dh, pv + rows, C, Dh, 0.f, dS, S, S * S, H);
    for_each_row(op, H * S, [=] __device__(int64_t r) {
      float* ds_row = dS + r * S;
      const float* p_row = P + r * S;
      const int64_t i = r % S;
      float dot = 0.f;
      for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) dot += ds_row[j] * p_row[j];
      dot = block_sum(dot);
      for (int64_t j = threadIdx.x; j < S; j += blockDim.x) ds_row[j] = j <= i ? p_row[j] * (ds_row[j] - dot) : 0.f;
    });
    if (pdq != nullptr)  // dQ += scale dS K
      gemm_batched(op, false, false, S, Dh, S, scale, dS, S, S * S, pk + rows, C, Dh, 1.f, pdq + rows, C, Dh, H);
    if (pdk != nullptr)  // dK += scale dS^T Q
      gemm_batched(op, true, false, S, Dh, S, scale, dS, S, S * S, pq + rows, C, Dh, 1.f, pdk + rows, C, Dh, H);
  }
}

}  // namespace moe::cuda
