// CUDA softmax over the last dimension, row normalisation (x / row sum) and cross-entropy with fused
// softmax, forward and backward.
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/index_check.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

namespace {
constexpr const char* kIgnoredNote = " (-1 marks an ignored row)";

// Called by every thread of a row's block: yrow (C) = softmax(xrow); returns the row's log-sum-exp.
// Subtracting the row max first keeps exp() in [0, 1], so large logits cannot overflow.
__device__ float softmax_row(float* yrow, const float* xrow, int64_t C) {
  float row_max = -INFINITY;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) row_max = fmaxf(row_max, xrow[c]);
  row_max = block_max(row_max);
  float sum = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    yrow[c] = expf(xrow[c] - row_max);
    sum += yrow[c];
  }
  sum = block_sum(sum);
  const float inv_sum = 1.f / sum;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yrow[c] *= inv_sum;
  return logf(sum) + row_max;
}

// The row sum of normalize_rows, in float32 from column 0 up, as the CPU sums it.
__device__ float row_sum(const float* row, int64_t C) {
  float sum = 0.f;
  for (int64_t c = 0; c < C; ++c) sum += row[c];
  return sum;
}

// The number of rows whose target is not -1 (ignored).
int64_t counted_rows(const char* op, const int32_t* targets, int64_t N) {
  return reduce_to_host<long long>(op, N, 0, [=] __device__(int64_t n) -> long long { return targets[n] >= 0; },
                                   Add{});
}
}  // namespace

// x, y (N, C): y = x / row sum. A thread per row: the rows are a token's expert scores (tens).
void normalize_rows_forward(Tensor& y, const Tensor& x) {
  const char* op = "normalize_rows_forward";
  const int64_t C = x.dim(1);
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each(op, x.dim(0), [=] __device__(int64_t n) {
    const float sum = row_sum(px + n * C, C);
    for (int64_t c = 0; c < C; ++c) py[n * C + c] = px[n * C + c] / sum;
  });
}

// dx, dy, x (N, C): y_c = x_c / S, so dL/dx_c = (dy_c - sum_j dy_j y_j) / S. A thread per row.
void normalize_rows_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "normalize_rows_backward";
  const int64_t C = x.dim(1);
  const float* px = f32(op, x);
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each(op, x.dim(0), [=] __device__(int64_t n) {
    const float* xrow = px + n * C;
    const float* dyrow = pdy + n * C;
    const float sum = row_sum(xrow, C);
    float dot = 0.f;
    for (int64_t c = 0; c < C; ++c) dot += dyrow[c] * (xrow[c] / sum);
    for (int64_t c = 0; c < C; ++c) pdx[n * C + c] += (dyrow[c] - dot) / sum;
  });
}

// x, y (N, C).
void softmax_forward(Tensor& y, const Tensor& x) {
  const char* op = "softmax_forward";
  const int64_t C = x.dim(1);
  const float* px = f32(op, x);
  float* py = f32(op, y);
  for_each_row(op, x.dim(0), [=] __device__(int64_t n) { softmax_row(py + n * C, px + n * C, C); });
}

// dx, dy, y (N, C):  dx += y * (dy - sum_c dy*y).
void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  const char* op = "softmax_backward";
  const int64_t C = y.dim(1);
  const float* py = f32(op, y);
  const float* pdy = f32(op, dy);
  float* pdx = f32(op, dx);
  for_each_row(op, y.dim(0), [=] __device__(int64_t n) {
    const float* yrow = py + n * C;
    const float* dyrow = pdy + n * C;
    float dot = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dot += dyrow[c] * yrow[c];
    dot = block_sum(dot);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) pdx[n * C + c] += yrow[c] * (dyrow[c] - dot);
  });
}

// probs, logits (N, V); targets (N) in [-1, V). Each row's loss logsumexp - logits[n, target] goes to
// the scratch buffer; their mean over non-ignored rows is summed in double (N reaches 1e5..1e6 rows)
// on the device and copied to the host once.
float cross_entropy_forward(Tensor& probs, const Tensor& logits, const Tensor& targets) {
  const char* op = "cross_entropy_forward";
  const int64_t N = logits.dim(0), V = logits.dim(1);
  require_indices_in_range(op, "targets", targets, -1, V, kIgnoredNote);
  const float* plogits = f32(op, logits);
  const int32_t* ptargets = i32(op, targets);
  float* pprobs = f32(op, probs);
  float* row_loss = static_cast<float*>(scratch_buffer(op, N * int64_t{sizeof(float)}));
  for_each_row(op, N, [=] __device__(int64_t n) {
    const float logsumexp = softmax_row(pprobs + n * V, plogits + n * V, V);
    const int32_t t = ptargets[n];
    if (threadIdx.x == 0) row_loss[n] = t < 0 ? 0.f : logsumexp - plogits[n * V + t];
  });
  const double2 sum = reduce_to_host(op, N, make_double2(0, 0), [=] __device__(int64_t n) {
    return ptargets[n] < 0 ? make_double2(0, 0) : make_double2(row_loss[n], 1);
  }, Add{});
  return sum.y == 0 ? 0.f : static_cast<float>(sum.x / sum.y);
}

// dlogits, probs (N, V); targets (N):  dlogits += dloss * (probs - onehot(target)) / counted rows.
void cross_entropy_backward(Tensor& dlogits, const Tensor& probs, const Tensor& targets, float dloss) {
  const char* op = "cross_entropy_backward";
  const int64_t N = probs.dim(0), V = probs.dim(1);
  require_indices_in_range(op, "targets", targets, -1, V, kIgnoredNote);
  const float* pprobs = f32(op, probs);
  const int32_t* ptargets = i32(op, targets);
  float* pdlogits = f32(op, dlogits);
  const int64_t counted = counted_rows(op, ptargets, N);
  if (counted == 0) return;
  const float scale = dloss / static_cast<float>(counted);
  for_each(op, N * V, [=] __device__(int64_t i) {
    const int64_t n = i / V;
    const int32_t t = ptargets[n];
    if (t < 0) return;
    float d = pdlogits[i] + scale * pprobs[i];
    if (i - n * V == t) d -= scale;
    pdlogits[i] = d;
  });
}

}  // namespace moe::cuda
