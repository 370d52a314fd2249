// CPU grouped linear (the MoE experts): one moe::gemm per non-empty group of rows, each with its own
// weight; the GEMM provider's threads work inside each product.
#include "core/backend.h"
#include "core/cpu/gemm.h"

namespace moe::cpu {

// y_g (rows of group g, out) = x_g (rows, in) w_g (in, out), w (G, in, out).
void grouped_linear_forward(Tensor& y, const Tensor& x, const std::vector<int64_t>& offset, const Tensor& w) {
  const int64_t G = w.dim(0), in = w.dim(1), out = w.dim(2);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t first = offset[g], rows = offset[g + 1] - first;
    if (rows == 0) continue;
    gemm(false, false, rows, out, in, 1.f, x.f32() + first * in, in, w.f32() + g * in * out, out, 0.f,
         y.f32() + first * out, out);
  }
}

// dx_g (rows, in) += dy_g (rows, out) w_g^T;  dw_g (in, out) += x_g^T dy_g.
void grouped_linear_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x,
                             const std::vector<int64_t>& offset, const Tensor& w) {
  const int64_t G = w.dim(0), in = w.dim(1), out = w.dim(2);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t first = offset[g], rows = offset[g + 1] - first;
    if (rows == 0) continue;
    const float* dy_g = dy.f32() + first * out;
    if (dx != nullptr)
      gemm(false, true, rows, in, out, 1.f, dy_g, out, w.f32() + g * in * out, out, 1.f, dx->f32() + first * in, in);
    if (dw != nullptr)
      gemm(true, false, in, out, rows, 1.f, x.f32() + first * in, in, dy_g, out, 1.f, dw->f32() + g * in * out, out);
  }
}

}  // namespace moe::cpu
