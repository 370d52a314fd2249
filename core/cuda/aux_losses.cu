// CUDA kernels of the router's auxiliary losses: load-balancing sums and gradient, z-loss and its gradient.
#include <vector>

#include "core/backend.h"
#include "core/cuda/device_tensor.h"
#include "core/cuda/index_check.h"
#include "core/cuda/launch.cuh"

namespace moe::cuda {

namespace {
// log(sum_j exp(row_j)) with the float32 row max subtracted first; the sum and the log in double.
__device__ double logsumexp_row(const float* row, int64_t n) {
  float m = row[0];
  for (int64_t j = 1; j < n; ++j) m = fmaxf(m, row[j]);
  double s = 0.0;
  for (int64_t j = 0; j < n; ++j) s += exp(static_cast<double>(row[j] - m));
  return m + log(s);
}
}  // namespace

// probs (T, E), expert (T, k) -> prob_sum (G, E), choice_count (G, E), in double: the G groups' rows
// are the rows of a (T / G, G * E) table whose column g * E + e is expert e of group g; its column sums
// on the device into the scratch buffer, then one copy of both to the host.
void load_balance_sums(std::vector<double>& prob_sum, std::vector<double>& choice_count, const Tensor& probs,
                       const Tensor& expert, int64_t groups) {
  const char* op = "load_balance_sums";
  const int64_t T = probs.dim(0), E = probs.dim(1), k = expert.dim(1), rows = T / groups, GE = groups * E;
  require_indices_in_range(op, "expert", expert, 0, E);
  const float* p = f32(op, probs);
  const int32_t* idx = i32(op, expert);
  double* sums = static_cast<double*>(scratch_buffer(op, 2 * GE * int64_t{sizeof(double)}));  // [prob_sum | count]
  column_reduce<double>(
      op, rows, GE,
      [=] __device__(int64_t r, int64_t c) { return static_cast<double>(p[(c / E * rows + r) * E + c % E]); },
      [=] __device__(int64_t c, double s) { sums[c] = s; });
  column_reduce<double>(
      op, rows, GE,
      [=] __device__(int64_t r, int64_t c) {
        const int32_t* ti = idx + (c / E * rows + r) * k;
        double count = 0;
        for (int64_t j = 0; j < k; ++j) count += ti[j] == c % E ? 1.0 : 0.0;
        return count;
      },
      [=] __device__(int64_t c, double s) { sums[GE + c] = s; });
  std::vector<double> host(static_cast<size_t>(2 * GE));
  MOE_CUDA_CHECK(op, cudaMemcpy(host.data(), sums, host.size() * sizeof(double), cudaMemcpyDeviceToHost));
  prob_sum.assign(host.begin(), host.begin() + GE);
  choice_count.assign(host.begin() + GE, host.end());
}

// dprobs (T, E) += g (G, E) on every row of each group, g[g, e] = dloss * coeff * E * f_ge / num_tokens / G
// rounded to float32 on the host (as the CPU does) and copied to the device.
void load_balance_backward(Tensor& dprobs, const std::vector<double>& choice_count, double num_choices,
                           double num_tokens, double coeff, double dloss) {
  const char* op = "load_balance_backward";
  const int64_t E = dprobs.dim(1), GE = static_cast<int64_t>(choice_count.size()), G = GE / E;
  const int64_t rows = dprobs.dim(0) / G;
  std::vector<float> g(static_cast<size_t>(GE));
  for (int64_t i = 0; i < GE; ++i)
    g[i] = static_cast<float>(dloss * coeff * E * (choice_count[i] / num_choices) / num_tokens / G);
  float* pg = static_cast<float*>(scratch_buffer(op, GE * int64_t{sizeof(float)}));
  MOE_CUDA_CHECK(op, cudaMemcpy(pg, g.data(), g.size() * sizeof(float), cudaMemcpyHostToDevice));
  float* dp = f32(op, dprobs);
  for_each(op, dprobs.numel(), [=] __device__(int64_t i) { dp[i] += pg[i / E / rows * E + i % E]; });
}

// logits (T, E) -> coeff * sum_t lse_t^2 / mean_over; a thread per token, the sum in double on the device.
double z_loss_forward(const Tensor& logits, double coeff, double mean_over) {
  const char* op = "z_loss_forward";
  if (mean_over == 0) return 0.0;
  const int64_t E = logits.dim(1);
  const float* l = f32(op, logits);
  const double sum = reduce_to_host(op, logits.dim(0), 0.0, [=] __device__(int64_t t) {
    const double lse = logsumexp_row(l + t * E, E);
    return lse * lse;
  }, Add{});
  return coeff * sum / mean_over;
}

// dlogits (T, E) += dloss * coeff * 2 lse_t / mean_over * probs (T, E); a thread per token.
void z_loss_backward(Tensor& dlogits, const Tensor& logits, const Tensor& probs, double coeff,
                     double mean_over, double dloss) {
  const char* op = "z_loss_backward";
  if (mean_over == 0) return;
  const int64_t E = logits.dim(1);
  const float* p = f32(op, probs);
  const float* l = f32(op, logits);
  float* dl = f32(op, dlogits);
  for_each(op, logits.dim(0), [=] __device__(int64_t t) {
    const float scale = static_cast<float>(dloss * coeff * 2.0 * logsumexp_row(l + t * E, E) / mean_over);
    for (int64_t e = 0; e < E; ++e) dl[t * E + e] += scale * p[t * E + e];
  });
}

}  // namespace moe::cuda
