// NormLayer: RMSNorm or LayerNorm over the feature dimension, with its gain (and LayerNorm's bias),
// forward and backward side by side.
#pragma once

#include <cstdint>
#include <string>

#include "core/model/model_options.h"
#include "core/parameters.h"
#include "core/tensor.h"

namespace moe {

struct NormWeights {
  Tensor g;  // (d) gain, initialised to 1
  Tensor b;  // (d) bias, initialised to 0; LayerNorm only (undefined for RMSNorm)
};

// Not thread-safe: forward saves what backward reads.
class NormLayer {
 public:
  // Throws InvalidArgument when d_model < 1 or eps is not finite and >= 0.
  NormLayer(NormKind kind, int64_t d_model, float eps = 1e-5f, Device device = Device::CPU);

  // x (N, d) -> y (N, d), overwritten; y must not be x. Keeps a reference to x (its storage, not a
  // copy) for backward: leave x unchanged until then.
  void forward(Tensor& y, const Tensor& x);
  // dy (N, d): accumulates dx (N, d) += dL/dx and the gain (and bias) gradients. dx must not be dy.
  void backward(Tensor& dx, const Tensor& dy);

  // Adds "<prefix>.g" (and "<prefix>.b") as Dense parameters without weight decay.
  void register_parameters(ParameterRegistry& registry, const std::string& prefix);

  NormKind kind() const { return kind_; }
  int64_t num_params() const { return weights.g.numel() + (weights.b.defined() ? weights.b.numel() : 0); }

  NormWeights weights;
  NormWeights grads;

 private:
  NormKind kind_;
  float eps_;
  Tensor x_;     // (N, d) the forward's input (shared storage)
  Tensor mean_;  // (N) LayerNorm only
  Tensor rstd_;  // (N)
};

}  // namespace moe
