// DenseFFN: the position-wise feed-forward block y = act(x W_in) W_out (ReLU, GELU or SwiGLU, no
// biases), forward and backward side by side; the dense layers' FFN and the MoE shared expert. Its two
// products in float32 or with bfloat16 inputs (mixed precision).
#pragma once

#include <cstdint>
#include <string>

#include "core/model/model_options.h"
#include "core/moe/moe_config.h"
#include "core/parameters.h"
#include "core/tensor.h"

namespace moe {

struct DenseFFNConfig {
  int64_t d_model = 0;
  int64_t hidden = 0;           // h; SwiGLU has two input matrices of h columns each ([gate | up])
  Activation activation = Activation::GELU;
  float init_std = 0.02f;       // w_in ~ N(0, init_std)
  float out_init_std = 0.02f;   // w_out ~ N(0, out_init_std); the model scales it by 1/sqrt(2 n_layers)
  // Of the two products; bf16: bfloat16 inputs (x, the activation's output, the weights' copies, the
  // output gradients), float32 outputs. The activation computes in float32 always and rounds its output
  // and gradient once, as it writes them.
  Precision precision = Precision::FP32;

  // Throws InvalidArgument naming the first bad field: sizes >= 1, finite init stds > 0.
  void validate() const;
  // Columns of w_in: hidden, or 2 * hidden for SwiGLU.
  int64_t in_cols() const { return activation == Activation::SwiGLU ? 2 * hidden : hidden; }
};

struct FFNWeights {
  Tensor w_in;   // (d, in_cols)
  Tensor w_out;  // (h, d)
};

// Not thread-safe: forward saves what backward reads; buffers are members reused across calls.
class DenseFFN {
 public:
  // Validates cfg; draws w_in and w_out from the streams (seed, "<name>.w_in") and (seed, "<name>.w_out").
  // Weights, gradients and activations live on `device`; forward takes x there.
  DenseFFN(const DenseFFNConfig& cfg, uint64_t seed, const std::string& name, Device device = Device::CPU);

  // x (N, d) -> y (N, d), overwritten; y must not be x. Keeps a reference to x for backward: leave
  // it unchanged until then.
  void forward(Tensor& y, const Tensor& x);
  // dy (N, d): accumulates dx (N, d) += dL/dx and the weight gradients. dx must not be dy.
  void backward(Tensor& dx, const Tensor& dy);

  // Adds "<prefix>.w_in" and "<prefix>.w_out" (Dense, with weight decay).
  void register_parameters(ParameterRegistry& registry, const std::string& prefix);

  const DenseFFNConfig& config() const { return cfg_; }
  int64_t num_params() const { return weights.w_in.numel() + weights.w_out.numel(); }
  // (N, in_cols) pre-activations x W_in of the last forward.
  const Tensor& pre_activation() const { return pre_; }

  FFNWeights weights;
  FFNWeights grads;

 private:
  DenseFFNConfig cfg_;
  // Saved by forward for backward. The products' inputs as they read them: the float32 tensors
  // themselves (sharing storage), or with Precision::BF16 their bfloat16 copies in the *_bf16_ buffers,
  // the weights' made anew each forward (the optimizer changes the float32 masters every step).
  Tensor x_, x_bf16_;          // (N, d) the input
  Tensor w_in_, w_in_bf16_;    // (d, in_cols)
  Tensor w_out_, w_out_bf16_;  // (h, d)
  Tensor pre_;                 // (N, in_cols) float32, the activation's input
  Tensor act_;                 // (N, h) the activation's output in the products' dtype
  // Backward scratch.
  Tensor dy_bf16_;             // (N, d) bf16: dy as the products' backward reads it
  Tensor dact_;                // (N, h)
  Tensor dpre_;                // (N, in_cols) in the products' dtype
};

}  // namespace moe
