// The per-row math of group_limit_forward (core/ops.h): one definition that the CPU kernel and, compiled by
// nvcc, the CUDA kernel share, so both keep the same groups bit for bit.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

// One token's group score of the n experts [first, first + n): the highest selection score
// (terms = 1), or the highest plus the second highest (terms = 2; the highest alone when n = 1).
// score(e) is expert e's selection score. Equal scores count twice: two experts tied for the top give
// twice that score.
template <class Score>
MOE_HOST_DEVICE inline float group_score(const Score& score, int64_t first, int64_t n, int64_t terms) {
  float best = score(first);
  if (terms == 1 || n == 1) {
    for (int64_t e = first + 1; e < first + n; ++e) best = score(e) > best ? score(e) : best;
    return best;
  }
  float second = score(first + 1);
  if (second > best) {
    const float swap = best;
    best = second;
    second = swap;
  }
  for (int64_t e = first + 2; e < first + n; ++e) {
    const float v = score(e);
    if (v > best) {
      second = best;
      best = v;
    } else if (v > second) {
      second = v;
    }
  }
  return best + second;
}

// Whether group g of `groups` is among the `top_groups` highest of group_scores(h), h in [0, groups):
// fewer than top_groups groups rank above it, a group ranking above when its score is higher or equal
// with a lower id (ties: the lower group id is kept).
template <class GroupScores>
MOE_HOST_DEVICE inline bool group_kept(const GroupScores& group_scores, int64_t g, int64_t groups,
                                       int64_t top_groups) {
  const float mine = group_scores(g);
  int64_t above = 0;
  for (int64_t h = 0; h < groups; ++h) {
    const float other = group_scores(h);
    if (other > mine || (other == mine && h < g)) ++above;
  }
  return above < top_groups;
}

}  // namespace moe
