// Ops of the optimizer step: parameter updates, the gradient's sum of squares and its scaling for
// clipping. They live in core so that each backend implements them beside the model's ops (optim/
// holds the control logic: which parameters decay, step counters, bias corrections, the all-reduce).
//
// Conventions (differ from core/ops.h): updates modify their tensors in place, element by element;
// every tensor argument of one call has the same shape (any rank) and is float32 on one device.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

// The scalars of one AdamW update, computed once per step by the caller.
struct AdamWScalars {
  float lr;                 // learning rate, finite
  float beta1, beta2;       // moment decay rates, in [0, 1)
  float bias_correction1;   // 1 - beta1^step, in (0, 1]
  float bias_correction2;   // 1 - beta2^step, in (0, 1]
  float eps;                // > 0
  float weight_decay;       // >= 0; 0 for parameters that do not decay
};

// AdamW (Loshchilov & Hutter), decoupled weight decay, in place for every element i:
//   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
//   w -= lr * ((m / bias_correction1) / (sqrt(v / bias_correction2) + eps) + weight_decay * w).
// w, m, v (updated), g (read): same shape.
void adamw_update(Tensor& w, Tensor& m, Tensor& v, const Tensor& g, const AdamWScalars& s);

// SGD with heavy-ball momentum and decoupled weight decay, in place for every element i:
//   buf = momentum buf + g;  w -= lr * (buf + weight_decay * w).
// w, buf (updated), g (read): same shape; momentum in [0, 1), weight_decay >= 0, lr finite.
void sgd_update(Tensor& w, Tensor& buf, const Tensor& g, float lr, float momentum, float weight_decay);

// sum_i x_i^2, each square and the sum in double, over x of any shape (0 for no elements). The order
// of the additions depends only on the number of elements: the same bits on every call, whatever the
// thread count.
double sum_of_squares(const Tensor& x);

// x_i = float(x_i * factor), the product in double (gradient clipping by max_norm / norm, the
// gradient sync's mean). Any shape; factor finite.
void scale_in_place(Tensor& x, double factor);

// Auxiliary-loss-free balancing's bias step: with mean = sum_e load[e] / E (each term divided, summed
// in double in index order), bias[e] += float(+rate) when load[e] < mean, float(-rate) when above, 0
// when equal. bias (E) float32, load: E host counts (the tokens each expert took), rate finite >= 0.
void selection_bias_update(Tensor& bias, const std::vector<int64_t>& load, double rate);

}  // namespace moe
