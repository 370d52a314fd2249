// The parameter registry: every trainable tensor with its gradient under one name, so that
// gradient sync, norms, optimizers and checkpoints are loops over names, not hand-written lists.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

enum class ParamKind {
  Dense,   // replicated on every rank: data-parallel over all ranks
  Expert,  // a shard of experts: data-parallel over the ranks holding the same shard
};

struct Parameter {
  std::string name;  // unique, e.g. "layers.0.moe.w_gate"
  Tensor value;      // shares storage with the owning layer's tensor
  Tensor grad;       // same shape; backward passes accumulate into it
  ParamKind kind = ParamKind::Dense;
  bool weight_decay = true;  // false for norms and biases
};

// Not thread-safe. Tensors are held by shared storage: the layer and the registry see one buffer.
class ParameterRegistry {
 public:
  // Registers a parameter; throws InvalidArgument on a duplicate name or a grad of another shape.
  void add(const std::string& name, const Tensor& value, const Tensor& grad, ParamKind kind,
           bool weight_decay = true);
  // Throws InvalidArgument naming the missing parameter.
  Parameter& get(const std::string& name);
  std::vector<Parameter>& all() { return params_; }
  const std::vector<Parameter>& all() const { return params_; }
  void zero_grads();
  int64_t numel() const;

 private:
  std::vector<Parameter> params_;
};

}  // namespace moe
