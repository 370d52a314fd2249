// Choosing the next token from a model's logits: greedy, or a draw from the softmax at a temperature,
// restricted to the top k tokens and to the top-p nucleus (Holtzman et al. 2019), in the order Hugging
// Face's generate applies them (temperature, top-k, top-p).
#pragma once

#include <cstdint>
#include <span>

namespace moe {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (the highest logit; ties to the lower id); > 0: sample
  int64_t top_k = 0;         // sample among the k highest logits only; 0: all
  double top_p = 1.0;        // sample among the fewest highest-probability tokens whose probabilities
                             // sum to at least top_p (always the most likely one); 1: all
  uint64_t seed = 0;         // draw i is uniform01(stream_id(seed, "generate"), i): the same seed and
                             // logits give the same tokens, on any number of ranks
};

// The token chosen from `logits` (V finite values) for draw number `draw`. temperature >= 0, top_k >= 0,
// top_p in (0, 1] (asserted: the caller checked the user's values). In double throughout.
int32_t choose_token(std::span<const float> logits, const SamplingOptions& options, uint64_t draw);

}  // namespace moe
