// CPU normalisations over the last dimension, forward and backward: rmsnorm and layernorm.
#include <cmath>

#include "core/backend.h"
#include "core/cpu/lane_sum.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

namespace {
// Calls row(n, x[n], out[n]) for each row n of x, out (N, C), in parallel over the rows; out is the
// forward's y or the backward's dx.
template <typename RowFn>
void for_each_row(Tensor& out, const Tensor& x, RowFn row) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = x.f32();
  float* pout = out.f32();
#pragma omp parallel for if (N * C >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) row(n, px + n * C, pout + n * C);
}
}  // namespace

// ---- rmsnorm: y = x * rstd * g,  rstd = 1 / sqrt(mean(x^2) + eps) ----

// x, y (N, C); g (C); rstd (N).
void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& g, float eps) {
  const int64_t C = x.dim(1);
  const float* pg = g.f32();
  float* prstd = rstd.f32();
  for_each_row(y, x, [&](int64_t n, const float* xrow, float* yrow) {
    const float sum_sq = lane_sum(C, [&](int64_t c) { return xrow[c] * xrow[c]; });
    const float r = 1.f / std::sqrt(sum_sq / static_cast<float>(C) + eps);
    prstd[n] = r;
    for (int64_t c = 0; c < C; ++c) yrow[c] = xrow[c] * r * pg[c];
  });
}

// With r = rstd[n] and dr/dx_i = -r^3 x_i / C:
//   dx_i += r (dy_i g_i - x_i r^2 / C * sum_c dy_c g_c x_c);   dg_c += sum_n dy_c x_c r.
void rmsnorm_backward(Tensor* dx, Tensor* dg, const Tensor& dy, const Tensor& x, const Tensor& g,
                      const Tensor& rstd) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = x.f32();
  const float* pg = g.f32();
  const float* pdy = dy.f32();
  const float* prstd = rstd.f32();
  if (dx != nullptr)
    for_each_row(*dx, x, [&](int64_t n, const float* xrow, float* dxrow) {
      const float* dyrow = pdy + n * C;
      const float r = prstd[n];
      const float dot = lane_sum(C, [&](int64_t c) { return dyrow[c] * pg[c] * xrow[c]; });
      const float coeff = r * r * dot / static_cast<float>(C);
      for (int64_t c = 0; c < C; ++c) dxrow[c] += r * (dyrow[c] * pg[c] - xrow[c] * coeff);
    });
  if (dg != nullptr) {
    float* pdg = dg->f32();
    for (int64_t n = 0; n < N; ++n)  // every row adds into the same dg: not parallel over n
      for (int64_t c = 0; c < C; ++c) pdg[c] += pdy[n * C + c] * px[n * C + c] * prstd[n];
  }
}

// ---- layernorm: y = (x - mean) * rstd * g + b,  rstd = 1 / sqrt(var + eps) ----

// x, y (N, C); g, b (C); mean, rstd (N). Two passes (mean, then squared deviations) avoid the
// cancellation of E[x^2] - E[x]^2 when |mean| >> std.
void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& g,
                       const Tensor& b, float eps) {
  const int64_t C = x.dim(1);
  const float* pg = g.f32();
  const float* pb = b.f32();
  float* pmean = mean.f32();
  float* prstd = rstd.f32();
  for_each_row(y, x, [&](int64_t n, const float* xrow, float* yrow) {
    const float m = lane_sum(C, [&](int64_t c) { return xrow[c]; }) / static_cast<float>(C);
    const float sum_sq = lane_sum(C, [&](int64_t c) { return (xrow[c] - m) * (xrow[c] - m); });
    const float r = 1.f / std::sqrt(sum_sq / static_cast<float>(C) + eps);
    pmean[n] = m;
    prstd[n] = r;
    for (int64_t c = 0; c < C; ++c) yrow[c] = (xrow[c] - m) * r * pg[c] + pb[c];
  });
}

// With xhat = (x - mean) rstd and dxhat = dy g:
//   dx += rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat));  dg += sum_n dy xhat;  db += sum_n dy.
void layernorm_backward(Tensor* dx, Tensor* dg, Tensor* db, const Tensor& dy, const Tensor& x,
                        const Tensor& g, const Tensor& mean, const Tensor& rstd) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = x.f32();
  const float* pg = g.f32();
  const float* pdy = dy.f32();
  const float* pmean = mean.f32();
  const float* prstd = rstd.f32();
  if (dx != nullptr)
    for_each_row(*dx, x, [&](int64_t n, const float* xrow, float* dxrow) {
      const float* dyrow = pdy + n * C;
      const float m = pmean[n], r = prstd[n];
      const float sum_dxhat = lane_sum(C, [&](int64_t c) { return dyrow[c] * pg[c]; });
      const float sum_dxhat_xhat = lane_sum(C, [&](int64_t c) { return dyrow[c] * pg[c] * (xrow[c] - m) * r; });
      const float mean_dxhat = sum_dxhat / static_cast<float>(C);
      const float mean_dxhat_xhat = sum_dxhat_xhat / static_cast<float>(C);
      for (int64_t c = 0; c < C; ++c) {
        const float xhat = (xrow[c] - m) * r;
        dxrow[c] += r * (dyrow[c] * pg[c] - mean_dxhat - xhat * mean_dxhat_xhat);
      }
    });
  // Every row adds into the same dg and db: not parallel over n.
  if (dg != nullptr) {
    float* pdg = dg->f32();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) pdg[c] += pdy[n * C + c] * (px[n * C + c] - pmean[n]) * prstd[n];
  }
  if (db != nullptr) {
    float* pdb = db->f32();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) pdb[c] += pdy[n * C + c];
  }
}

}  // namespace moe::cpu
