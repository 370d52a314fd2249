// CPU grouped linear (the MoE experts): one product per non-empty group of rows, each with its own
// weight; the GEMM provider's threads work inside each product. Row counts differ per group and per
// call, so bfloat16 products use gemm_bf16's primitives with the row count left open (Bf16Rows::Varying).
#include "core/backend.h"
#include "core/cpu/product.h"

namespace moe::cpu {

namespace {

// Calls each(g, x_g, first, rows) for every non-empty group: its rows [first, first + rows) of x.
template <class Each>
void for_each_group(const Tensor& x, const std::vector<int64_t>& offset, Each each) {
  for (size_t g = 0; g + 1 < offset.size(); ++g) {
    const int64_t first = offset[g], rows = offset[g + 1] - first;
    if (rows > 0) each(static_cast<int64_t>(g), x.rows(first, first + rows), first, rows);
  }
}

// w_g (in, out) of w (G, in, out), as a view.
Tensor group_weight(const Tensor& w, int64_t g) { return w.rows(g, g + 1).reshape({w.dim(1), w.dim(2)}); }

constexpr Bf16Rows kVarying = Bf16Rows::Varying;

}  // namespace

// y_g (rows of group g, out) = x_g (rows, in) w_g (in, out), w (G, in, out).
void grouped_linear_forward(Tensor& y, const Tensor& x, const std::vector<int64_t>& offset, const Tensor& w) {
  const int64_t in = w.dim(1), out = w.dim(2);
  for_each_group(x, offset, [&](int64_t g, const Tensor& x_g, int64_t first, int64_t rows) {
    product(false, false, rows, out, in, x_g, in, group_weight(w, g), out, 0.f, y.f32() + first * out, out, kVarying);
  });
}

// dx_g (rows, in) += dy_g (rows, out) w_g^T;  dw_g (in, out) += x_g^T dy_g.
void grouped_linear_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x,
                             const std::vector<int64_t>& offset, const Tensor& w) {
  const int64_t in = w.dim(1), out = w.dim(2);
  for_each_group(x, offset, [&](int64_t g, const Tensor& x_g, int64_t first, int64_t rows) {
    const Tensor dy_g = dy.rows(first, first + rows), w_g = group_weight(w, g);
    if (dx != nullptr) product(false, true, rows, in, out, dy_g, out, w_g, out, 1.f, dx->f32() + first * in, in, kVarying);
    if (dw != nullptr) product(true, false, in, out, rows, x_g, in, dy_g, out, 1.f, dw->f32() + g * in * out, out, kVarying);
  });
}

}  // namespace moe::cpu
