// CUDA grouped linear (the MoE experts), each group of rows with its own weight. float32: all groups'
// products of one direction (forward, dx, dw) in one cuBLAS grouped GEMM (cuda/gemm.h's gemm_grouped).
// bfloat16 inputs: one cublasGemmEx per non-empty group (gemm_bf16), because cublasGemmGroupedBatchedEx
// takes bfloat16 A and B only with a bfloat16 C, while y, dx and dw are float32 (dx and dw accumulate
// there). Measured on an H200 with cuBLAS 13.0 at the experts' shapes (8 groups of ~2048 rows, 4096 x
// 14336): the grouped call with a float32 C returns CUBLAS_STATUS_NOT_SUPPORTED; with a bfloat16 C it
// ran at 272 TFLOP/s, the per-group calls at 764 (launches are asynchronous; the host loop costs a few
// microseconds per group).
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/gemm.h"

namespace moe::cuda {

namespace {

// One problem per group, the product `make(g, first, rows)` with group g's rows [first, first + rows);
// gemm_grouped leaves out the groups without rows.
template <class Make>
std::vector<GemmProblem> per_group(const std::vector<int64_t>& offset, Make make) {
  std::vector<GemmProblem> problems;
  for (size_t g = 0; g + 1 < offset.size(); ++g)
    problems.push_back(make(static_cast<int64_t>(g), offset[g], offset[g + 1] - offset[g]));
  return problems;
}

// Calls each(g, first, rows) for every non-empty group g, its rows [first, first + rows).
template <class Each>
void for_each_group(const std::vector<int64_t>& offset, Each each) {
  for (size_t g = 0; g + 1 < offset.size(); ++g)
    if (offset[g + 1] > offset[g]) each(static_cast<int64_t>(g), offset[g], offset[g + 1] - offset[g]);
}

}  // namespace

// y_g (rows of group g, out) = x_g (rows, in) w_g (in, out), w (G, in, out).
void grouped_linear_forward(Tensor& y, const Tensor& x, const std::vector<int64_t>& offset, const Tensor& w) {
  const char* op = "grouped_linear_forward";
  const int64_t in = w.dim(1), out = w.dim(2);
  float* py = f32(op, y);
  if (x.dtype() == DType::BF16) {
    const uint16_t *px = bf16(op, x), *pw = bf16(op, w);
    for_each_group(offset, [&](int64_t g, int64_t first, int64_t rows) {
      gemm_bf16(op, false, false, rows, out, in, px + first * in, in, pw + g * in * out, out, 0.f, py + first * out, out);
    });
    return;
  }
  const float *px = f32(op, x), *pw = f32(op, w);
  gemm_grouped(op, false, false, 1.f, per_group(offset, [=](int64_t g, int64_t first, int64_t rows) {
                 return GemmProblem{rows, out, in, px + first * in, in, pw + g * in * out, out, py + first * out, out};
               }), 0.f);
}

// dx_g (rows, in) += dy_g (rows, out) w_g^T;  dw_g (in, out) += x_g^T dy_g.
void grouped_linear_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x,
                             const std::vector<int64_t>& offset, const Tensor& w) {
  const char* op = "grouped_linear_backward";
  const int64_t in = w.dim(1), out = w.dim(2);
  if (x.dtype() == DType::BF16) {
    const uint16_t *pdy = bf16(op, dy), *px = bf16(op, x), *pw = bf16(op, w);
    float* pdx = dx != nullptr ? f32(op, *dx) : nullptr;
    float* pdw = dw != nullptr ? f32(op, *dw) : nullptr;
    for_each_group(offset, [&](int64_t g, int64_t first, int64_t rows) {
      const uint16_t* pdy_g = pdy + first * out;
      if (pdx != nullptr)
        gemm_bf16(op, false, true, rows, in, out, pdy_g, out, pw + g * in * out, out, 1.f, pdx + first * in, in);
      if (pdw != nullptr)
        gemm_bf16(op, true, false, in, out, rows, px + first * in, in, pdy_g, out, 1.f, pdw + g * in * out, out);
    });
    return;
  }
  const float *pdy = f32(op, dy), *px = f32(op, x), *pw = f32(op, w);
  if (dx != nullptr) {
    float* pdx = f32(op, *dx);
    gemm_grouped(op, false, true, 1.f, per_group(offset, [=](int64_t g, int64_t first, int64_t rows) {
                   return GemmProblem{rows, in, out, pdy + first * out, out, pw + g * in * out, out,
                                      pdx + first * in, in};
                 }), 1.f);
  }
  if (dw != nullptr) {
    float* pdw = f32(op, *dw);
    gemm_grouped(op, true, false, 1.f, per_group(offset, [=](int64_t g, int64_t first, int64_t rows) {
                   return GemmProblem{in, out, rows, px + first * in, in, pdy + first * out, out,
                                      pdw + g * in * out, out};
                 }), 1.f);
  }
}

}  // namespace moe::cuda
