// CUDA normalisations over the last dimension, forward and backward: rmsnorm and layernorm. A block
// per row; the parameter gradients (sums over rows) as deterministic column reductions.
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

// ---- rmsnorm: y = x * rstd * g,  rstd = 1 / sqrt(mean(x^2) + eps) ----

// x, y (N, C); g (C); rstd (N).
void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& g, float eps) {
  const char* op = "rmsnorm_forward";
  const int64_t C = x.dim(1);
  const float* px = f32(op, x);
  const float* pg = f32(op, g);
  float* py = f32(op, y);
  float* prstd = f32(op, rstd);
  for_each_row(op, x.dim(0), [=] __device__(int64_t n) {
    const float* xrow = px + n * C;
    float sum_sq = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sum_sq += xrow[c] * xrow[c];
    const float r = 1.f / sqrtf(block_sum(sum_sq) / static_cast<float>(C) + eps);
    if (threadIdx.x == 0) prstd[n] = r;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) py[n * C + c] = xrow[c] * r * pg[c];
  });
}

// With r = rstd[n] and dr/dx_i = -r^3 x_i / C:
//   dx_i += r (dy_i g_i - x_i r^2 / C * sum_c dy_c g_c x_c);   dg_c += sum_n dy_c x_c r.
void rmsnorm_backward(Tensor* dx, Tensor* dg, const Tensor& dy, const Tensor& x, const Tensor& g,
                      const Tensor& rstd) {
  const char* op = "rmsnorm_backward";
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = f32(op, x);
  const float* pg = f32(op, g);
  const float* pdy = f32(op, dy);
  const float* prstd = f32(op, rstd);
  if (dx != nullptr) {
    float* pdx = f32(op, *dx);
    for_each_row(op, N, [=] __device__(int64_t n) {
      const float* xrow = px + n * C;
      const float* dyrow = pdy + n * C;
      const float r = prstd[n];
      float dot = 0.f;  // sum_c dy_c g_c x_c
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += dyrow[c] * pg[c] * xrow[c];
      const float coeff = r * r * block_sum(dot) / static_cast<float>(C);
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) pdx[n * C + c] += r * (dyrow[c] * pg[c] - xrow[c] * coeff);
    });
  }
  if (dg != nullptr) {
    float* pdg = f32(op, *dg);
    column_reduce<float>(
        op, N, C, [=] __device__(int64_t n, int64_t c) { return pdy[n * C + c] * px[n * C + c] * prstd[n]; },
        [=] __device__(int64_t c, float s) { pdg[c] += s; });
  }
}

// ---- layernorm: y = (x - mean) * rstd * g + b,  rstd = 1 / sqrt(var + eps) ----

// x, y (N, C); g, b (C); mean, rstd (N). Two passes (mean, then squared deviations) avoid the
// cancellation of E[x^2] - E[x]^2 when |mean| >> std.
void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& g,
                       const Tensor& b, float eps) {
  const char* op = "layernorm_forward";
  const int64_t C = x.dim(1);
  const float* px = f32(op, x);
  const float* pg = f32(op, g);
  const float* pb = f32(op, b);
  float* py = f32(op, y);
  float* pmean = f32(op, mean);
  float* prstd = f32(op, rstd);
  for_each_row(op, x.dim(0), [=] __device__(int64_t n) {
    const float* xrow = px + n * C;
    float sum = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sum += xrow[c];
    const float m = block_sum(sum) / static_cast<float>(C);
    float sum_sq = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sum_sq += (xrow[c] - m) * (xrow[c] - m);
    const float r = 1.f / sqrtf(block_sum(sum_sq) / static_cast<float>(C) + eps);
    if (threadIdx.x == 0) {
      pmean[n] = m;
      prstd[n] = r;
    }
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) py[n * C + c] = (xrow[c] - m) * r * pg[c] + pb[c];
  });
}

// With xhat = (x - mean) rstd and dxhat = dy g:
//   dx += rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat));  dg += sum_n dy xhat;  db += sum_n dy.
void layernorm_backward(Tensor* dx, Tensor* dg, Tensor* db, const Tensor& dy, const Tensor& x,
                        const Tensor& g, const Tensor& mean, const Tensor& rstd) {
  const char* op = "layernorm_backward";
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = f32(op, x);
  const float* pg = f32(op, g);
  const float* pdy = f32(op, dy);
  const float* pmean = f32(op, mean);
  const float* prstd = f32(op, rstd);
  if (dx != nullptr) {
    float* pdx = f32(op, *dx);
    for_each_row(op, N, [=] __device__(int64_t n) {
      const float* xrow = px + n * C;
      const float* dyrow = pdy + n * C;
      const float m = pmean[n], r = prstd[n];
      float sum_dxhat = 0.f, sum_dxhat_xhat = 0.f;
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float dxhat = dyrow[c] * pg[c];
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * (xrow[c] - m) * r;
      }
      const float mean_dxhat = block_sum(sum_dxhat) / static_cast<float>(C);
      const float mean_dxhat_xhat = block_sum(sum_dxhat_xhat) / static_cast<float>(C);
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float xhat = (xrow[c] - m) * r;
        pdx[n * C + c] += r * (dyrow[c] * pg[c] - mean_dxhat - xhat * mean_dxhat_xhat);
      }
    });
  }
  if (dg != nullptr) {
    float* pdg = f32(op, *dg);
    column_reduce<float>(
        op, N, C, [=] __device__(int64_t n, int64_t c) { return pdy[n * C + c] * (px[n * C + c] - pmean[n]) * prstd[n]; },
        [=] __device__(int64_t c, float s) { pdg[c] += s; });
  }
  if (db != nullptr) {
    float* pdb = f32(op, *db);
    column_reduce<float>(
        op, N, C, [=] __device__(int64_t n, int64_t c) { return pdy[n * C + c]; },
        [=] __device__(int64_t c, float s) { pdb[c] += s; });
  }
}

}  // namespace moe::cuda
