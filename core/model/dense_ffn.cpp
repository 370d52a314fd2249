// DenseFFN (core/model/dense_ffn.h): linear -> activation -> linear, and the same path in reverse.
#include "core/model/dense_ffn.h"

#include <cmath>

#include "core/check.h"
#include "core/ops.h"
#include "core/parameter_names.h"
#include "core/random.h"

namespace moe {

void DenseFFNConfig::validate() const {
  MOE_REQUIRE(d_model >= 1, "dense FFN: d_model = ", d_model, " must be >= 1");
  MOE_REQUIRE(hidden >= 1, "dense FFN: hidden = ", hidden, " must be >= 1");
  MOE_REQUIRE(std::isfinite(init_std) && init_std > 0.f, "dense FFN: init_std = ", init_std,
              " must be finite and > 0");
  MOE_REQUIRE(std::isfinite(out_init_std) && out_init_std > 0.f, "dense FFN: out_init_std = ", out_init_std,
              " must be finite and > 0");
}

DenseFFN::DenseFFN(const DenseFFNConfig& cfg, uint64_t seed, const std::string& name) : cfg_(cfg) {
  cfg_.validate();
  weights.w_in = Tensor::empty({cfg_.d_model, cfg_.in_cols()});
  weights.w_out = Tensor::empty({cfg_.hidden, cfg_.d_model});
  fill_normal(weights.w_in, cfg_.init_std, stream_id(seed, names::tensor_name(name, names::kWIn)));
  fill_normal(weights.w_out, cfg_.out_init_std, stream_id(seed, names::tensor_name(name, names::kWOut)));
  grads.w_in = Tensor::zeros(weights.w_in.shape());
  grads.w_out = Tensor::zeros(weights.w_out.shape());
}

void DenseFFN::register_parameters(ParameterRegistry& registry, const std::string& prefix) {
  registry.add(names::tensor_name(prefix, names::kWIn), weights.w_in, grads.w_in, ParamKind::Dense);
  registry.add(names::tensor_name(prefix, names::kWOut), weights.w_out, grads.w_out, ParamKind::Dense);
}

// x, y (N, d); pre_ (N, in_cols); act_ (N, h).
void DenseFFN::forward(Tensor& y, const Tensor& x) {
  require_rank("DenseFFN::forward", "x", x, 2);
  const int64_t N = x.dim(0);
  x_ = x;
  pre_.resize({N, cfg_.in_cols()});
  act_.resize({N, cfg_.hidden});
  linear_forward(pre_, x, weights.w_in, nullptr);
  switch (cfg_.activation) {
    case Activation::ReLU: relu_forward(act_, pre_); break;
    case Activation::GELU: gelu_forward(act_, pre_); break;
    case Activation::SwiGLU: swiglu_forward(act_, pre_); break;
  }
  linear_forward(y, act_, weights.w_out, nullptr);
}

// dx, dy (N, d).
void DenseFFN::backward(Tensor& dx, const Tensor& dy) {
  MOE_REQUIRE(x_.defined(), "DenseFFN::backward called before forward");
  const int64_t N = x_.dim(0);
  dact_.resize({N, cfg_.hidden});
  dact_.zero();
  linear_backward(&dact_, &grads.w_out, nullptr, dy, act_, weights.w_out);
  dpre_.resize({N, cfg_.in_cols()});
  dpre_.zero();
  switch (cfg_.activation) {
    case Activation::ReLU: relu_backward(dpre_, dact_, pre_); break;
    case Activation::GELU: gelu_backward(dpre_, dact_, pre_); break;
    case Activation::SwiGLU: swiglu_backward(dpre_, dact_, pre_); break;
  }
  linear_backward(&dx, &grads.w_in, nullptr, dpre_, x_, weights.w_in);
}

}  // namespace moe
