// The parameter registry: every trainable tensor with its gradient under one name, so that
// gradient sync, norms, optimizers and checkpoints are loops over names, not hand-written lists.
// Gradients live in one flat buffer per parameter kind (flatten_gradients), so the gradient sync
// all-reduces each kind's buffer as it is, with no packing.
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
//
// Use: add every parameter, then call flatten_gradients once; the layers then accumulate into views
// of the flat buffers without knowing it.
class ParameterRegistry {
 public:
  // Registers a parameter; throws InvalidArgument on a duplicate name, a grad of another shape or
  // dtype than the value, or a call after flatten_gradients. The registry records `grad`'s address
  // (the layer's own gradient tensor) for flatten_gradients to rebind: the layer must stay where it
  // is (not be moved or destroyed) until flatten_gradients has run.
  void add(const std::string& name, const Tensor& value, Tensor& grad, ParamKind kind, bool weight_decay = true);

  // Once, after the last add: allocates one contiguous float32 buffer per ParamKind (on the
  // gradients' device), holding that kind's gradients in registration order, copies each gradient
  // in, and rebinds both the layer's gradient tensor (through the address recorded at add) and the
  // Parameter's grad to a view of it. Values are unchanged. Throws InvalidArgument when called twice
  // or when a gradient is not float32 or the gradients are not all on one device.
  void flatten_gradients();
  bool flattened() const { return flattened_; }

  // The flat gradient buffer of one kind, (n) with n the kind's total elements (0 when the model has
  // none of that kind). Requires flatten_gradients (asserted).
  Tensor& gradients(ParamKind kind);

  // Throws InvalidArgument naming the missing parameter.
  Parameter& get(const std::string& name);
  std::vector<Parameter>& all() { return params_; }
  const std::vector<Parameter>& all() const { return params_; }
  // Zeroes every gradient: the flat buffers once flattened, else each parameter's.
  void zero_grads();
  int64_t numel() const;

 private:
  std::vector<Parameter> params_;
  std::vector<Tensor*> layer_grads_;  // params_[i]'s gradient tensor in its layer, until flattened
  Tensor flat_grads_[2];              // indexed by ParamKind
  bool flattened_ = false;
};

}  // namespace moe
