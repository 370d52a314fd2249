// The parameter registry (core/parameters.h).
#include "core/parameters.h"

#include "core/check.h"

namespace moe {

void ParameterRegistry::add(const std::string& name, const Tensor& value, Tensor& grad, ParamKind kind,
                            bool weight_decay) {
  MOE_REQUIRE(!flattened_, "parameter '", name, "' registered after flatten_gradients");
  for (const Parameter& p : params_) MOE_REQUIRE(p.name != name, "parameter '", name, "' registered twice");
  MOE_REQUIRE(value.shape() == grad.shape() && value.dtype() == grad.dtype(), "parameter '", name,
              "': gradient ", to_string(grad.shape()), " ", to_string(grad.dtype()), " differs from value ",
              to_string(value.shape()), " ", to_string(value.dtype()));
  params_.push_back(Parameter{name, value, grad, kind, weight_decay});
  layer_grads_.push_back(&grad);
}

void ParameterRegistry::flatten_gradients() {
  MOE_REQUIRE(!flattened_, "flatten_gradients called twice");
  const Device device = params_.empty() ? Device::CPU : params_[0].grad.device();
  int64_t total[2] = {0, 0};
  for (const Parameter& p : params_) {
    MOE_REQUIRE(p.grad.dtype() == DType::F32 && p.grad.device() == device, "flatten_gradients: gradient of '",
                p.name, "' is ", to_string(p.grad.dtype()), " on ", to_string(p.grad.device()),
                "; accepted: float32, all on one device");
    total[static_cast<int>(p.kind)] += p.grad.numel();
  }
  for (int kind = 0; kind < 2; ++kind) flat_grads_[kind] = Tensor::empty({total[kind]}, DType::F32, device);
  int64_t at[2] = {0, 0};
  for (size_t i = 0; i < params_.size(); ++i) {
    Parameter& p = params_[i];
    const int kind = static_cast<int>(p.kind);
    Tensor view = flat_grads_[kind].rows(at[kind], at[kind] + p.grad.numel()).reshape(p.grad.shape());
    view.copy_from(p.grad);
    at[kind] += p.grad.numel();
    p.grad = view;
    *layer_grads_[i] = view;
  }
  layer_grads_.clear();
  flattened_ = true;
}

Tensor& ParameterRegistry::gradients(ParamKind kind) {
  MOE_ASSERT(flattened_, "gradients(kind) needs flatten_gradients first");
  return flat_grads_[static_cast<int>(kind)];
}

Parameter& ParameterRegistry::get(const std::string& name) {
  for (Parameter& p : params_)
    if (p.name == name) return p;
  throw InvalidArgument("no parameter named '" + name + "'");
}

void ParameterRegistry::zero_grads() {
  if (flattened_) {
    for (Tensor& flat : flat_grads_) flat.zero();
  } else {
    for (Parameter& p : params_) p.grad.zero();
  }
}

int64_t ParameterRegistry::numel() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += p.value.numel();
  return n;
}

}  // namespace moe
