// The choices that shape the dense parts of the model (normalisation, position encoding), shared by
// the model's layers and the run configuration.
#pragma once

namespace moe {

enum class NormKind {
  RMSNorm,    // y = x / rms(x) * g (Zhang & Sennrich 2019; LLaMA)
  LayerNorm,  // y = (x - mean) / std * g + b (GPT-2)
};

enum class PositionKind {
  Rotary,   // q and k rotated by position in every attention layer (RoFormer; LLaMA)
  Learned,  // a learned (seq_len, d_model) table added to the token embedding (GPT-2)
};

}  // namespace moe
