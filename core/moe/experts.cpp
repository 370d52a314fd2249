// Grouped expert FFN forward and backward over the permuted token buffer.
#include "core/moe/experts.h"

#include "core/check.h"
#include "core/ops.h"

namespace moe {

namespace {

// Expert e's matrix as a 2-D view of the stacked (E_local, rows, cols) weight tensor.
Tensor expert_matrix(const Tensor& stacked, int64_t e) {
  return stacked.rows(e, e + 1).reshape({stacked.dim(1), stacked.dim(2)});
}

void activation_forward(Tensor& act, const Tensor& pre, Activation a) {
  switch (a) {
    case Activation::ReLU: relu_forward(act, pre); return;
    case Activation::GELU: gelu_forward(act, pre); return;
    case Activation::SwiGLU: swiglu_forward(act, pre); return;
  }
}

void activation_backward(Tensor& dpre, const Tensor& dact, const Tensor& pre, Activation a) {
  switch (a) {
    case Activation::ReLU: relu_backward(dpre, dact, pre); return;
    case Activation::GELU: gelu_backward(dpre, dact, pre); return;
    case Activation::SwiGLU: swiglu_backward(dpre, dact, pre); return;
  }
}

void check_layout(const Tensor& x, const std::vector<int64_t>& offset, const Tensor& w_in,
                  const Tensor& w_out) {
  MOE_ASSERT(static_cast<int64_t>(offset.size()) == w_in.dim(0) + 1, "one segment per local expert");
  MOE_ASSERT(offset.front() == 0 && offset.back() == x.dim(0), "segments cover the token buffer");
  MOE_ASSERT(w_out.dim(0) == w_in.dim(0) && w_out.dim(2) == x.dim(1) && w_in.dim(1) == x.dim(1),
             "expert weight shapes match d_model");
}

}  // namespace

void experts_forward(Tensor& y, ExpertActivations& saved, const Tensor& x, const std::vector<int64_t>& offset,
                     const Tensor& w_in, const Tensor& w_out, Activation activation) {
  check_layout(x, offset, w_in, w_out);
  const int64_t M = x.dim(0), E = w_in.dim(0), in_cols = w_in.dim(2), h = w_out.dim(1);
  resize_on(saved.pre, {M, in_cols}, x.device());
  resize_on(saved.act, {M, h}, x.device());
  for (int64_t e = 0; e < E; ++e) {
    if (offset[e] == offset[e + 1]) continue;
    Tensor pre_e = saved.pre.rows(offset[e], offset[e + 1]);
    linear_forward(pre_e, x.rows(offset[e], offset[e + 1]), expert_matrix(w_in, e), nullptr);
  }
  activation_forward(saved.act, saved.pre, activation);  // one call over all experts' rows
  for (int64_t e = 0; e < E; ++e) {
    if (offset[e] == offset[e + 1]) continue;
    Tensor y_e = y.rows(offset[e], offset[e + 1]);
    linear_forward(y_e, saved.act.rows(offset[e], offset[e + 1]), expert_matrix(w_out, e), nullptr);
  }
}

void experts_backward(Tensor* dx, Tensor* dw_in, Tensor* dw_out, const Tensor& dy, const Tensor& x,
                      const std::vector<int64_t>& offset, const Tensor& w_in, const Tensor& w_out,
                      ExpertActivations& saved, Activation activation) {
  check_layout(x, offset, w_in, w_out);
  const int64_t M = x.dim(0), E = w_in.dim(0), in_cols = w_in.dim(2), h = w_out.dim(1);
  Tensor& dact = saved.dact;
  resize_on(dact, {M, h}, x.device());
  dact.zero();
  for (int64_t e = 0; e < E; ++e) {
    if (offset[e] == offset[e + 1]) continue;
    Tensor dact_e = dact.rows(offset[e], offset[e + 1]);
    Tensor dw_out_e = dw_out ? expert_matrix(*dw_out, e) : Tensor();
    linear_backward(&dact_e, dw_out ? &dw_out_e : nullptr, nullptr, dy.rows(offset[e], offset[e + 1]),
                    saved.act.rows(offset[e], offset[e + 1]), expert_matrix(w_out, e));
  }
  Tensor& dpre = saved.dpre;
  resize_on(dpre, {M, in_cols}, x.device());
  dpre.zero();
  activation_backward(dpre, dact, saved.pre, activation);
  for (int64_t e = 0; e < E; ++e) {
    if (offset[e] == offset[e + 1]) continue;
    Tensor dx_e = dx ? dx->rows(offset[e], offset[e + 1]) : Tensor();
    Tensor dw_in_e = dw_in ? expert_matrix(*dw_in, e) : Tensor();
    linear_backward(dx ? &dx_e : nullptr, dw_in ? &dw_in_e : nullptr, nullptr,
                    dpre.rows(offset[e], offset[e + 1]), x.rows(offset[e], offset[e + 1]),
                    expert_matrix(w_in, e));
  }
}

}  // namespace moe
