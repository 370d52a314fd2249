// The parameter registry (core/parameters.h).
#include "core/parameters.h"

#include "core/check.h"

namespace moe {

void ParameterRegistry::add(const std::string& name, const Tensor& value, const Tensor& grad,
                            ParamKind kind, bool weight_decay) {
  for (const Parameter& p : params_) MOE_REQUIRE(p.name != name, "parameter '", name, "' registered twice");
  MOE_REQUIRE(value.shape() == grad.shape(), "parameter '", name, "': gradient shape ",
              to_string(grad.shape()), " differs from value shape ", to_string(value.shape()));
  params_.push_back(Parameter{name, value, grad, kind, weight_decay});
}

Parameter& ParameterRegistry::get(const std::string& name) {
  for (Parameter& p : params_)
    if (p.name == name) return p;
  throw InvalidArgument("no parameter named '" + name + "'");
}

void ParameterRegistry::zero_grads() {
  for (Parameter& p : params_) p.grad.zero();
}

int64_t ParameterRegistry::numel() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += p.value.numel();
  return n;
}

}  // namespace moe
