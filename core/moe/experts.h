// The experts: E independent FFNs run as one grouped pass over the permuted token buffer, where
// expert e's tokens are the contiguous rows [offset[e], offset[e+1]).
#pragma once

#include <cstdint>
#include <vector>

#include "core/moe/moe_config.h"
#include "core/tensor.h"

namespace moe {

// What the forward keeps for the backward, and the backward's scratch; kept between calls so the
// buffers are allocated once rather than on every call.
struct ExpertActivations {
  Tensor pre;   // (M, in_cols) x W_in before the activation, float32 (the activation's input)
  Tensor act;   // (M, h) after the activation, in x's dtype (what W_out's products read)
  Tensor dact;  // (M, h) backward scratch, float32
  Tensor dpre;  // (M, in_cols) backward scratch, in x's dtype (what W_in's backward products read)
};

// The first half of experts_forward: saved.pre = x W_in and saved.act over all rows, hidden = h. A
// backward after a forward whose saved activations were overwritten (a scratch shared by layers that
// recompute) calls it again with the same arguments.
void experts_activations(ExpertActivations& saved, const Tensor& x, const std::vector<int64_t>& offset,
                         const Tensor& w_in, int64_t hidden, Activation activation);

// x (M, d) permuted tokens; offset (E_local + 1) segment starts within x, offset.back() == M;
// w_in (E_local, d, in_cols) with in_cols = h (ReLU, GELU) or 2h (SwiGLU: [gate | up]);
// w_out (E_local, h, d). Writes y (M, d) and saved: two grouped_linear calls (core/ops.h) around one
// activation over all rows. x, w_in and w_out are float32, or all bfloat16 (mixed precision: the
// activation computes in float32 and writes its output rounded to bfloat16 for the second product); y
// is float32.
void experts_forward(Tensor& y, ExpertActivations& saved, const Tensor& x, const std::vector<int64_t>& offset,
                     const Tensor& w_in, const Tensor& w_out, Activation activation);

// Accumulates dx (M, d), dw_in, dw_out (shapes of w_in, w_out; float32); any may be null except that
// dx == nullptr still needs the activation gradient when dw_in is wanted. dy (M, d) in x's dtype; the
// activation writes its gradient in x's dtype (rounded once) for the first product's backward.
void experts_backward(Tensor* dx, Tensor* dw_in, Tensor* dw_out, const Tensor& dy, const Tensor& x,
                      const std::vector<int64_t>& offset, const Tensor& w_in, const Tensor& w_out,
                      ExpertActivations& saved, Activation activation);

}  // namespace moe
