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

DenseFFN::DenseFFN(const DenseFFNConfig& cfg, uint64_t seed, const std::string& name, Device device)
    : cfg_(cfg) {
  cfg_.validate();
  weights.w_in = random_normal({cfg_.d_model, cfg_.in_cols()}, cfg_.init_std,
                               stream_id(seed, names::tensor_name(name, names::kWIn)), device);
  weights.w_out = random_normal({cfg_.hidden, cfg_.d_model}, cfg_.out_init_std,
                                stream_id(seed, names::tensor_name(name, names::kWOut)), device);
  grads.w_in = Tensor::zeros(weights.w_in.shape(), DType::F32, device);
  grads.w_out = Tensor::zeros(weights.w_out.shape(), DType::F32, device);
}

void DenseFFN::register_parameters(ParameterRegistry& registry, const std::string& prefix) {
  registry.add(names::tensor_name(prefix, names::kWIn), weights.w_in, grads.w_in, ParamKind::Dense);
  registry.add(names::tensor_name(prefix, names::kWOut), weights.w_out, grads.w_out, ParamKind::Dense);
}

// x, y (N, d); pre_ (N, in_cols); act_ (N, h).
void DenseFFN::forward(Tensor& y, const Tensor& x) {
  require_rank("DenseFFN::forward", "x", x, 2);
  const int64_t N = x.dim(0);
  const DType products = product_dtype(cfg_.precision);
  x_ = as_dtype(x, x_bf16_, products);
  w_in_ = as_dtype(weights.w_in, w_in_bf16_, products);
  w_out_ = as_dtype(weights.w_out, w_out_bf16_, products);
  resize_on(pre_, {N, cfg_.in_cols()}, x.device());
  resize_on(act_, {N, cfg_.hidden}, x.device(), products);  // only the second product reads it
  linear_forward(pre_, x_, w_in_, nullptr);
  switch (cfg_.activation) {
    case Activation::ReLU: relu_forward(act_, pre_); break;
    case Activation::GELU: gelu_forward(act_, pre_); break;
    case Activation::SwiGLU: swiglu_forward(act_, pre_); break;
  }
  linear_forward(y, act_, w_out_, nullptr);
}

// dx, dy (N, d).
void DenseFFN::backward(Tensor& dx, const Tensor& dy) {
  MOE_REQUIRE(x_.defined(), "DenseFFN::backward called before forward");
  const int64_t N = x_.dim(0);
  const DType products = product_dtype(cfg_.precision);
  resize_zeroed(dact_, {N, cfg_.hidden}, dy.device());
  linear_backward(&dact_, &grads.w_out, nullptr, as_dtype(dy, dy_bf16_, products), act_, w_out_);
  resize_zeroed(dpre_, {N, cfg_.in_cols()}, dy.device(), products);  // only the first product reads it
  switch (cfg_.activation) {
    case Activation::ReLU: relu_backward(dpre_, dact_, pre_); break;
    case Activation::GELU: gelu_backward(dpre_, dact_, pre_); break;
    case Activation::SwiGLU: swiglu_backward(dpre_, dact_, pre_); break;
  }
  linear_backward(&dx, &grads.w_in, nullptr, dpre_, x_, w_in_);
}

}  // namespace moe
