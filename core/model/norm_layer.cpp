// NormLayer (core/model/norm_layer.h): RMSNorm / LayerNorm with their parameters, over core/ops.h.
#include "core/model/norm_layer.h"

#include <cmath>

#include "core/check.h"
#include "core/ops.h"
#include "core/parameter_names.h"

namespace moe {

NormLayer::NormLayer(NormKind kind, int64_t d_model, float eps, Device device) : kind_(kind), eps_(eps) {
  MOE_REQUIRE(d_model >= 1, "NormLayer: d_model = ", d_model, " must be >= 1");
  MOE_REQUIRE(std::isfinite(eps) && eps >= 0.f, "NormLayer: eps = ", eps, " must be finite and >= 0");
  weights.g = Tensor::empty({d_model}, DType::F32, device);
  weights.g.fill(1.f);
  grads.g = Tensor::zeros({d_model}, DType::F32, device);
  if (kind_ == NormKind::LayerNorm) {
    weights.b = Tensor::zeros({d_model}, DType::F32, device);
    grads.b = Tensor::zeros({d_model}, DType::F32, device);
  }
}

void NormLayer::register_parameters(ParameterRegistry& registry, const std::string& prefix) {
  registry.add(names::tensor_name(prefix, names::kGain), weights.g, grads.g, ParamKind::Dense, /*weight_decay=*/false);
  if (kind_ == NormKind::LayerNorm)
    registry.add(names::tensor_name(prefix, names::kBias), weights.b, grads.b, ParamKind::Dense,
                 /*weight_decay=*/false);
}

// x, y (N, d); rstd_, mean_ (N).
void NormLayer::forward(Tensor& y, const Tensor& x) {
  require_rank("NormLayer::forward", "x", x, 2);
  x_ = x;
  resize_on(rstd_, {x.dim(0)}, x.device());
  if (kind_ == NormKind::RMSNorm) {
    rmsnorm_forward(y, rstd_, x, weights.g, eps_);
  } else {
    resize_on(mean_, {x.dim(0)}, x.device());
    layernorm_forward(y, mean_, rstd_, x, weights.g, weights.b, eps_);
  }
}

// dx, dy (N, d).
void NormLayer::backward(Tensor& dx, const Tensor& dy) {
  MOE_REQUIRE(x_.defined(), "NormLayer::backward called before forward");
  if (kind_ == NormKind::RMSNorm)
    rmsnorm_backward(&dx, &grads.g, dy, x_, weights.g, rstd_);
  else
    layernorm_backward(&dx, &grads.g, &grads.b, dy, x_, weights.g, mean_, rstd_);
}

}  // namespace moe
