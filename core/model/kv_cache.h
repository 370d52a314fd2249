// KVCache: the keys and values a model keeps while it generates, per attention layer, so that each new
// token attends to the earlier ones without recomputing them (TransformerLM::forward_cached).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

struct KVCache {
  // B sequences of up to `capacity` tokens each, n_layers attention layers of d_model columns, on `device`.
  // Each tensor is allocated whole here and never reallocated; its rows past `length` are undefined.
  KVCache(int64_t n_layers, int64_t batch, int64_t capacity, int64_t d_model, Device device);

  // Per layer, (B, capacity, d_model): row t of sequence b holds token t's key (after rotary) or value,
  // all heads side by side as the attention reads them.
  std::vector<Tensor> k, v;
  int64_t length = 0;  // tokens of each sequence cached so far: the next one's position

  int64_t batch() const { return k.at(0).dim(0); }
  int64_t capacity() const { return k.at(0).dim(1); }
};

}  // namespace moe
