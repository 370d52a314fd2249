// CUDA attention ops, forward and backward side by side: rotary position embedding and causal
// multi-head self-attention (tiled kernels with an online softmax; no (S, S) matrix).
#include <algorithm>
#include <cmath>

#include "core/backend.h"
#include "core/check.h"
#include "core/cuda/device_tensor.h"
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
// Per (b, h): Q, K, V, O are (S, Dh) strided views (row stride C = H * Dh) from row b * S, column
// h * Dh, and lse[b, h] is (S).  P = causal_softmax(scale Q K^T);  O = P V.  Tiled as
// FlashAttention-2 (Dao 2023), in float32 on the CUDA cores; no (S, S) matrix exists:
//  - a block of kWarps warps owns kOwnRows rows (queries in the forward and the dQ pass, keys in the
//    dK/dV pass), kRowsPerWarp per warp; a row's accumulators live in its warp's registers, lane l
//    holding columns l, l + 32, ... (Dh <= 32 * kChunks <= kCudaAttentionMaxHeadDim);
//  - the other side streams through shared memory kTile = 32 rows at a time, lane j computing the dot
//    products with row j of the tile (rows padded to Dh + 1 floats, so the lanes read 32 banks);
//  - a row's probabilities for a tile, one per lane, reach the accumulators by warp shuffles, and the
//    forward keeps the running max and sum of the online softmax per row in registers.
// Backward: D = rowsum(dO * O), then two passes that recompute P from lse, one block per query tile
// accumulating dQ and one block per key tile accumulating dK and dV: each gradient element has one
// writer (no atomics), and the results have the same bits on every run.

namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kOwnRows = kWarps * kRowsPerWarp;
constexpr int kTile = 32;  // streamed rows: one per lane
constexpr unsigned kFullWarp = 0xffffffffu;

// Every lane gets the same bits: at each butterfly step two lanes combine the same pair of values.
__device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}
__device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

__device__ float dot(const float* a, const float* b, int n) {
  float s = 0.f;
  for (int c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

// Rows [first, first + count) of a head view (row stride C) into dst (row stride ld), zeros for rows
// at or past S. The whole block takes part.
__device__ void load_rows(float* dst, int ld, const float* src, int64_t C, int64_t first, int count, int64_t S,
                          int Dh) {
  for (int e = threadIdx.x; e < count * Dh; e += blockDim.x) {
    const int r = e / Dh, c = e % Dh;
    dst[r * ld + c] = first + r < S ? src[(first + r) * C + c] : 0.f;
  }
}

// Where a block's rows are: sequence b, head h, rows [first, first + kOwnRows) of the sequence; the
// grid is (row tiles x B, H).
struct BlockRows {
  __device__ BlockRows(int64_t S, int64_t C, int Dh) {
    const int64_t tiles = (S + kOwnRows - 1) / kOwnRows;
    b = blockIdx.x / tiles;
    h = blockIdx.y;
    first = (blockIdx.x % tiles) * int64_t{kOwnRows};
    base = b * S * C + h * int64_t{Dh};
    lse_base = (b * gridDim.y + h) * S;
  }
  int64_t b, h, first, base, lse_base;
};

template <int kChunks>
__global__ void __launch_bounds__(kWarps * 32)
    attention_forward_kernel(const float* q, const float* k, const float* v, float* out, float* lse, int64_t S,
                             int64_t C, int Dh, float scale) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ld = Dh + 1;
  const BlockRows at(S, C, Dh);
  float* q_s = smem;                // (kOwnRows, Dh)
  float* k_s = q_s + kOwnRows * Dh;  // (kTile, Dh + 1)
  float* v_s = k_s + kTile * ld;     // (kTile, Dh + 1)
  load_rows(q_s, Dh, q + at.base, C, at.first, kOwnRows, S, Dh);
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kChunks];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int cc = 0; cc < kChunks; ++cc) acc[r][cc] = 0.f;
  }
  const int64_t last = min(S, at.first + kOwnRows) - 1;  // the block's last query: later keys are masked
  for (int64_t t0 = 0; t0 <= last; t0 += kTile) {
    __syncthreads();  // q_s is loaded; the previous tile's readers are done
    load_rows(k_s, ld, k + at.base, C, t0, kTile, S, Dh);
    load_rows(v_s, ld, v + at.base, C, t0, kTile, S, Dh);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t i = at.first + row;
      if (i >= S || t0 > i) continue;  // the whole warp alike
      // Key t0 <= i is unmasked, so m_new is finite; the first tile's correction is exp(-inf) = 0.
      const float s = t0 + lane <= i ? scale * dot(q_s + row * Dh, k_s + lane * ld, Dh) : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(s));
      const float p = expf(s - m_new), correction = expf(m[r] - m_new);
      l[r] = l[r] * correction + warp_sum(p);
      m[r] = m_new;
      const int keys = static_cast<int>(min(int64_t{kTile}, i - t0 + 1));
#pragma unroll
      for (int cc = 0; cc < kChunks; ++cc) acc[r][cc] *= correction;
      for (int j = 0; j < keys; ++j) {
        const float pj = __shfl_sync(kFullWarp, p, j);
#pragma unroll
        for (int cc = 0; cc < kChunks; ++cc)
          if (lane + 32 * cc < Dh) acc[r][cc] += pj * v_s[j * ld + lane + 32 * cc];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = at.first + warp * kRowsPerWarp + r;
    if (i >= S) continue;
    const float inv_sum = 1.f / l[r];  // l >= 1: the max term is exp(0)
#pragma unroll
    for (int cc = 0; cc < kChunks; ++cc)
      if (lane + 32 * cc < Dh) out[at.base + i * C + lane + 32 * cc] = acc[r][cc] * inv_sum;
    if (lane == 0) lse[at.lse_base + i] = m[r] + logf(l[r]);
  }
}

// dQ_i += scale sum_j dS_ij K_j over the keys j <= i, with P_ij = exp(scale q_i . k_j - lse_i) and
// dS_ij = P_ij (dO_i . v_j - D_i); the block owns query rows.
template <int kChunks>
__global__ void __launch_bounds__(kWarps * 32)
    attention_dq_kernel(const float* q, const float* k, const float* v, const float* dout, const float* lse,
                        const float* D, float* dq, int64_t S, int64_t C, int Dh, float scale) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ld = Dh + 1;
  const BlockRows at(S, C, Dh);
  float* q_s = smem;                  // (kOwnRows, Dh)
  float* do_s = q_s + kOwnRows * Dh;  // (kOwnRows, Dh)
  float* k_s = do_s + kOwnRows * Dh;  // (kTile, Dh + 1)
  float* v_s = k_s + kTile * ld;      // (kTile, Dh + 1)
  load_rows(q_s, Dh, q + at.base, C, at.first, kOwnRows, S, Dh);
  load_rows(do_s, Dh, dout + at.base, C, at.first, kOwnRows, S, Dh);
  float acc[kRowsPerWarp][kChunks] = {};
  const int64_t last = min(S, at.first + kOwnRows) - 1;
  for (int64_t t0 = 0; t0 <= last; t0 += kTile) {
    __syncthreads();
    load_rows(k_s, ld, k + at.base, C, t0, kTile, S, Dh);
    load_rows(v_s, ld, v + at.base, C, t0, kTile, S, Dh);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t i = at.first + row;
      if (i >= S || t0 > i) continue;
      float ds = 0.f;
      if (t0 + lane <= i) {
        const float p = expf(scale * dot(q_s + row * Dh, k_s + lane * ld, Dh) - lse[at.lse_base + i]);
        ds = p * (dot(do_s + row * Dh, v_s + lane * ld, Dh) - D[at.lse_base + i]);
      }
      const int keys = static_cast<int>(min(int64_t{kTile}, i - t0 + 1));
      for (int j = 0; j < keys; ++j) {
        const float dsj = __shfl_sync(kFullWarp, ds, j);
#pragma unroll
        for (int cc = 0; cc < kChunks; ++cc)
          if (lane + 32 * cc < Dh) acc[r][cc] += dsj * k_s[j * ld + lane + 32 * cc];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t i = at.first + warp * kRowsPerWarp + r;
    if (i >= S) continue;
#pragma unroll
    for (int cc = 0; cc < kChunks; ++cc)
      if (lane + 32 * cc < Dh) dq[at.base + i * C + lane + 32 * cc] += scale * acc[r][cc];
  }
}

// dV_j += sum_i P_ij dO_i and dK_j += scale sum_i dS_ij Q_i over the queries i >= j; the block owns key
// rows, and a null dk or dv is skipped.
template <int kChunks>
__global__ void __launch_bounds__(kWarps * 32)
    attention_dkdv_kernel(const float* q, const float* k, const float* v, const float* dout, const float* lse,
                          const float* D, float* dk, float* dv, int64_t S, int64_t C, int Dh, float scale) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ld = Dh + 1;
  const BlockRows at(S, C, Dh);
  float* k_s = smem;                  // (kOwnRows, Dh)
  float* v_s = k_s + kOwnRows * Dh;   // (kOwnRows, Dh)
  float* q_s = v_s + kOwnRows * Dh;   // (kTile, Dh + 1)
  float* do_s = q_s + kTile * ld;     // (kTile, Dh + 1)
  float* lse_s = do_s + kTile * ld;   // (kTile)
  float* d_s = lse_s + kTile;         // (kTile)
  load_rows(k_s, Dh, k + at.base, C, at.first, kOwnRows, S, Dh);
  load_rows(v_s, Dh, v + at.base, C, at.first, kOwnRows, S, Dh);
  float acc_k[kRowsPerWarp][kChunks] = {}, acc_v[kRowsPerWarp][kChunks] = {};
  // Queries before the block's first key see none of its keys.
  for (int64_t t0 = at.first / kTile * kTile; t0 < S; t0 += kTile) {
    __syncthreads();
    load_rows(q_s, ld, q + at.base, C, t0, kTile, S, Dh);
    load_rows(do_s, ld, dout + at.base, C, t0, kTile, S, Dh);
    if (threadIdx.x < kTile) {
      const bool in = t0 + threadIdx.x < S;
      lse_s[threadIdx.x] = in ? lse[at.lse_base + t0 + threadIdx.x] : 0.f;
      d_s[threadIdx.x] = in ? D[at.lse_base + t0 + threadIdx.x] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t j = at.first + row;
      if (j >= S || t0 + kTile <= j) continue;  // every query of the tile comes before key j
      const int64_t i = t0 + lane;
      float p = 0.f, ds = 0.f;
      if (i >= j && i < S) {
        p = expf(scale * dot(q_s + lane * ld, k_s + row * Dh, Dh) - lse_s[lane]);
        ds = p * (dot(do_s + lane * ld, v_s + row * Dh, Dh) - d_s[lane]);
      }
      const int from = static_cast<int>(max(int64_t{0}, j - t0)), to = static_cast<int>(min(int64_t{kTile}, S - t0));
      for (int ii = from; ii < to; ++ii) {
        const float pi = __shfl_sync(kFullWarp, p, ii), dsi = __shfl_sync(kFullWarp, ds, ii);
#pragma unroll
        for (int cc = 0; cc < kChunks; ++cc)
          if (lane + 32 * cc < Dh) {
            acc_v[r][cc] += pi * do_s[ii * ld + lane + 32 * cc];
            acc_k[r][cc] += dsi * q_s[ii * ld + lane + 32 * cc];
          }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t j = at.first + warp * kRowsPerWarp + r;
    if (j >= S) continue;
#pragma unroll
    for (int cc = 0; cc < kChunks; ++cc) {
      const int64_t e = at.base + j * C + lane + 32 * cc;
      if (lane + 32 * cc >= Dh) continue;
      if (dk != nullptr) dk[e] += scale * acc_k[r][cc];
      if (dv != nullptr) dv[e] += acc_v[r][cc];
    }
  }
}

// The floats of shared memory of each kernel: two owned tiles (kOwnRows, Dh), two streamed tiles
// (kTile, Dh + 1), and the dK/dV pass's lse and D of a streamed tile.
int64_t attention_shared_floats(int owned_tiles, int streamed_tiles, int values, int64_t Dh) {
  return owned_tiles * kOwnRows * Dh + streamed_tiles * kTile * (Dh + 1) + values * kTile;
}

// The instantiation of an attention kernel for head_dim Dh: kChunks = 1, 2 or 4 columns per lane.
template <class Kernel>
Kernel for_head_dim(int64_t Dh, Kernel chunks1, Kernel chunks2, Kernel chunks4) {
  return Dh <= 32 ? chunks1 : Dh <= 64 ? chunks2 : chunks4;
}

// Launches kernel(args...) on the (row tiles x B, H) grid with `shared_floats` floats of dynamic shared
// memory (past the default 48 KiB at Dh = 128, which the kernel is allowed first).
template <class... Params, class... Args>
void launch_attention(const char* op, void (*kernel)(Params...), int64_t B, int64_t H, int64_t S,
                      int64_t shared_floats, Args... args) {
  const int64_t blocks = (S + kOwnRows - 1) / kOwnRows * B;
  MOE_REQUIRE(blocks <= INT32_MAX && H <= 65535, op, ": ", B, " sequences of ", S, " tokens with ", H,
              " heads exceed the CUDA grid");
  if (blocks == 0) return;
  const size_t bytes = static_cast<size_t>(shared_floats) * sizeof(float);
  MOE_CUDA_CHECK(op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(H)), kWarps * 32, bytes>>>(args...);
  MOE_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

void causal_attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t n_heads, int64_t seq_len) {
  const char* op = "causal_attention_forward";
  const int64_t C = q.dim(1), H = n_heads, Dh = C / H, S = seq_len, B = q.dim(0) / S;
  const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
  const auto kernel = for_head_dim(Dh, attention_forward_kernel<1>, attention_forward_kernel<2>,
                                   attention_forward_kernel<4>);
  launch_attention(op, kernel, B, H, S, attention_shared_floats(1, 2, 0, Dh), f32(op, q), f32(op, k), f32(op, v),
                   f32(op, out), f32(op, lse), S, C, static_cast<int>(Dh), scale);
}

void causal_attention_backward(Tensor* dq, Tensor* dk, Tensor* dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                               int64_t n_heads, int64_t seq_len) {
  const char* op = "causal_attention_backward";
  const int64_t N = q.dim(0), C = q.dim(1), H = n_heads, Dh = C / H, S = seq_len, B = N / S;
  const float scale = 1.f / std::sqrt(static_cast<float>(Dh));
  const float* pout = f32(op, out);
  const float* pdout = f32(op, dout);
  // D (B, H, S) = rowsum(dO * O) per query and head: the softmax backward's row term.
  float* D = static_cast<float*>(scratch_buffer(op, std::max<int64_t>(1, B * H * S) * int64_t{sizeof(float)}));
  for_each(op, B * H * S, [=] __device__(int64_t e) {  // e = (b H + h) S + i, lse's layout
    const int64_t row = (e / (H * S) * S + e % S) * C + (e / S) % H * Dh;
    float sum = 0.f;
    for (int64_t c = 0; c < Dh; ++c) sum += pdout[row + c] * pout[row + c];
    D[e] = sum;
  });
  const int dh = static_cast<int>(Dh);
  if (dq != nullptr)
    launch_attention(op, for_head_dim(Dh, attention_dq_kernel<1>, attention_dq_kernel<2>, attention_dq_kernel<4>), B,
                     H, S, attention_shared_floats(2, 2, 0, Dh), f32(op, q), f32(op, k), f32(op, v), pdout,
                     f32(op, lse), static_cast<const float*>(D), f32(op, *dq), S, C, dh, scale);
  if (dk != nullptr || dv != nullptr)
    launch_attention(op,
                     for_head_dim(Dh, attention_dkdv_kernel<1>, attention_dkdv_kernel<2>, attention_dkdv_kernel<4>),
                     B, H, S, attention_shared_floats(2, 2, 2, Dh), f32(op, q), f32(op, k), f32(op, v), pdout,
                     f32(op, lse), static_cast<const float*>(D), dk ? f32(op, *dk) : nullptr,
                     dv ? f32(op, *dv) : nullptr, S, C, dh, scale);
}

}  // namespace moe::cuda
