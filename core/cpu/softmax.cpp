// CPU softmax over the last dimension, row normalisation (x / row sum) and cross-entropy with fused
// softmax, forward and backward.
#include <cmath>
#include <limits>

#include "core/backend.h"
#include "core/cpu/index_check.h"
#include "core/cpu/omp_threshold.h"

namespace moe::cpu {

namespace {
// The targets (N) of op's (N, V) tensor, after checking each is a class in [0, V) or -1 (ignored).
const int32_t* targets_in_range(const char* op, const Tensor& targets, int64_t V) {
  require_indices_in_range(op, "targets", targets, -1, V, " (-1 marks an ignored row)");
  return targets.i32();
}

// yrow (C) = softmax(xrow); returns log(sum_c exp(x_c - max)) + max, the row's log-sum-exp.
// Subtracting the row max first keeps exp() in [0, 1], so large logits cannot overflow.
float softmax_row(float* yrow, const float* xrow, int64_t C) {
  float row_max = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < C; ++c) row_max = xrow[c] > row_max ? xrow[c] : row_max;
  float sum = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    yrow[c] = std::exp(xrow[c] - row_max);
    sum += yrow[c];
  }
  const float inv_sum = 1.f / sum;
  for (int64_t c = 0; c < C; ++c) yrow[c] *= inv_sum;
  return std::log(sum) + row_max;
}
}  // namespace

// x, y (N, C).
void softmax_forward(Tensor& y, const Tensor& x) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = x.f32();
  float* py = y.f32();
#pragma omp parallel for if (N * C >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) softmax_row(py + n * C, px + n * C, C);
}

// dx, dy, y (N, C):  dx += y * (dy - sum_c dy*y).
void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  const int64_t N = y.dim(0), C = y.dim(1);
  const float* py = y.f32();
  const float* pdy = dy.f32();
  float* pdx = dx.f32();
#pragma omp parallel for if (N * C >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const float* yrow = py + n * C;
    const float* dyrow = pdy + n * C;
    float* dxrow = pdx + n * C;
    float dot = 0.f;
    for (int64_t c = 0; c < C; ++c) dot += dyrow[c] * yrow[c];
    for (int64_t c = 0; c < C; ++c) dxrow[c] += yrow[c] * (dyrow[c] - dot);
  }
}

namespace {
// The row sum of normalize_rows, in float32 from column 0 up (the CUDA kernel sums the same way).
float row_sum(const float* row, int64_t C) {
  float sum = 0.f;
  for (int64_t c = 0; c < C; ++c) sum += row[c];
  return sum;
}
}  // namespace

// x, y (N, C): y = x / row sum.
void normalize_rows_forward(Tensor& y, const Tensor& x) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = x.f32();
  float* py = y.f32();
#pragma omp parallel for if (N * C >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const float sum = row_sum(px + n * C, C);
    for (int64_t c = 0; c < C; ++c) py[n * C + c] = px[n * C + c] / sum;
  }
}

// dx, dy, x (N, C): y_c = x_c / S, so dL/dx_c = (dy_c - sum_j dy_j y_j) / S.
void normalize_rows_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* px = x.f32();
  const float* pdy = dy.f32();
  float* pdx = dx.f32();
#pragma omp parallel for if (N * C >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const float* xrow = px + n * C;
    const float* dyrow = pdy + n * C;
    const float sum = row_sum(xrow, C);
    float dot = 0.f;
    for (int64_t c = 0; c < C; ++c) dot += dyrow[c] * (xrow[c] / sum);
    for (int64_t c = 0; c < C; ++c) pdx[n * C + c] += (dyrow[c] - dot) / sum;
  }
}

// probs, logits (N, V); targets (N) in [-1, V). Returns the mean over non-ignored rows of
// -log probs[n, target] = logsumexp(logits[n]) - logits[n, target] (no log of an underflowed 0).
float cross_entropy_forward(Tensor& probs, const Tensor& logits, const Tensor& targets) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  const int32_t* ptargets = targets_in_range("cross_entropy_forward", targets, V);
  const float* plogits = logits.f32();
  float* pprobs = probs.f32();
  // The mean runs over up to N ~ 1e5..1e6 rows: a float sum would lose digits, so sum in double.
  double loss_sum = 0.0;
  int64_t counted = 0;
#pragma omp parallel for reduction(+ : loss_sum, counted) if (N * V >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const float logsumexp = softmax_row(pprobs + n * V, plogits + n * V, V);
    const int32_t t = ptargets[n];
    if (t < 0) continue;
    loss_sum += static_cast<double>(logsumexp - plogits[n * V + t]);
    counted += 1;
  }
  return counted == 0 ? 0.f : static_cast<float>(loss_sum / static_cast<double>(counted));
}

// dlogits, probs (N, V); targets (N):  dlogits += dloss * (probs - onehot(target)) / counted rows.
void cross_entropy_backward(Tensor& dlogits, const Tensor& probs, const Tensor& targets, float dloss) {
  const int64_t N = probs.dim(0), V = probs.dim(1);
  const int32_t* ptargets = targets_in_range("cross_entropy_backward", targets, V);
  const float* pprobs = probs.f32();
  float* pdlogits = dlogits.f32();
  int64_t counted = 0;
  for (int64_t n = 0; n < N; ++n) counted += ptargets[n] >= 0 ? 1 : 0;
  if (counted == 0) return;
  const float scale = dloss / static_cast<float>(counted);
#pragma omp parallel for if (N * V >= kMinParallelElements)
  for (int64_t n = 0; n < N; ++n) {
    const int32_t t = ptargets[n];
    if (t < 0) continue;
    const float* prow = pprobs + n * V;
    float* drow = pdlogits + n * V;
    for (int64_t c = 0; c < V; ++c) drow[c] += scale * prow[c];
    drow[t] -= scale;
  }
}

}  // namespace moe::cpu
