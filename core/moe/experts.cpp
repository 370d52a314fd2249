// Grouped expert FFN forward and backward over the permuted token buffer.
#include "core/moe/experts.h"

#include "core/ops.h"

namespace moe {

namespace {

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

}  // namespace

void experts_activations(ExpertActivations& saved, const Tensor& x, const std::vector<int64_t>& offset,
                         const Tensor& w_in, int64_t hidden, Activation activation) {
  const int64_t M = x.dim(0), in_cols = w_in.dim(2);
  resize_on(saved.pre, {M, in_cols}, x.device());
  resize_on(saved.act, {M, hidden}, x.device(), x.dtype());
  grouped_linear_forward(saved.pre, x, offset, w_in);
  activation_forward(saved.act, saved.pre, activation);  // one call over all experts' rows
}

void experts_forward(Tensor& y, ExpertActivations& saved, const Tensor& x, const std::vector<int64_t>& offset,
                     const Tensor& w_in, const Tensor& w_out, Activation activation) {
  experts_activations(saved, x, offset, w_in, w_out.dim(1), activation);
  grouped_linear_forward(y, saved.act, offset, w_out);
}

void experts_backward(Tensor* dx, Tensor* dw_in, Tensor* dw_out, const Tensor& dy, const Tensor& x,
                      const std::vector<int64_t>& offset, const Tensor& w_in, const Tensor& w_out,
                      ExpertActivations& saved, Activation activation) {
  const int64_t M = x.dim(0), in_cols = w_in.dim(2), h = w_out.dim(1);
  resize_zeroed(saved.dact, {M, h}, x.device());
  grouped_linear_backward(&saved.dact, dw_out, dy, saved.act, offset, w_out);
  resize_zeroed(saved.dpre, {M, in_cols}, x.device(), x.dtype());
  activation_backward(saved.dpre, saved.dact, saved.pre, activation);
  grouped_linear_backward(dx, dw_in, saved.dpre, x, offset, w_in);
}

}  // namespace moe
