// CUDA kernel of expert-choice routing's selection: each expert's top C tokens by score.
#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

// scores (T, E) -> token (E, C). One block per expert; each thread takes tokens t and counts the tokens
// ranked before t (higher score, or equal score and lower index): that rank is t's position in the
// expert's order, a permutation of [0, T), so the C tokens of rank < C each write their own element.
// O(T^2) comparisons per expert, every thread of a block reading the same score at once (a broadcast):
// simple and exact, for the T of one rank's micro-batch (thousands of tokens).
void expert_choice_topk(Tensor& token, const Tensor& scores) {
  const char* op = "expert_choice_topk";
  const int64_t T = scores.dim(0), E = scores.dim(1), C = token.dim(1);
  if (C == 0) return;
  const float* s = f32(op, scores);
  int32_t* out = i32(op, token);
  for_each_row(op, E, [=] __device__(int64_t e) {
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
      const float st = s[t * E + e];
      int64_t rank = 0;
      for (int64_t u = 0; u < T && rank < C; ++u) {
        const float su = s[u * E + e];
        rank += su > st || (su == st && u < t);
      }
      if (rank < C) out[e * C + rank] = static_cast<int32_t>(t);
    }
  });
}

}  // namespace moe::cuda
