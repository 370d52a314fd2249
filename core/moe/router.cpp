// The router: gate projection, softmax, top-k and their backward passes.
#include "core/moe/router.h"

#include <vector>

#include "core/check.h"
#include "core/ops.h"
#include "core/random.h"

namespace moe {

void topk_forward(Tensor& expert, Tensor& weight, const Tensor& probs, int64_t k, bool renormalize,
                  const Tensor* selection_bias) {
  const int64_t T = probs.dim(0), E = probs.dim(1);
  const float* p = probs.f32();
  const float* bias = selection_bias != nullptr ? selection_bias->f32() : nullptr;
  int32_t* idx = expert.i32();
  float* w = weight.f32();
  std::vector<float> score(k);  // selection scores of the chosen experts, best first
  for (int64_t t = 0; t < T; ++t) {
    const float* row = p + t * E;
    int32_t* ti = idx + t * k;
    // Insertion into a sorted list of k: E and k are small (tens), so this beats a heap.
    int64_t n = 0;
    for (int64_t e = 0; e < E; ++e) {
      const float v = bias != nullptr ? row[e] + bias[e] : row[e];
      if (n == k && !(v > score[k - 1])) continue;  // strict: ties keep the lower expert id
      int64_t pos = n < k ? n++ : k - 1;
      while (pos > 0 && v > score[pos - 1]) {
        score[pos] = score[pos - 1];
        ti[pos] = ti[pos - 1];
        --pos;
      }
      score[pos] = v;
      ti[pos] = static_cast<int32_t>(e);
    }
    float* tw = w + t * k;
    float sum = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      tw[j] = row[ti[j]];
      sum += tw[j];
    }
    if (renormalize)
      for (int64_t j = 0; j < k; ++j) tw[j] /= sum;  // sum > 0: softmax probabilities are positive
  }
}

void topk_backward(Tensor& dprobs, const Tensor& dweight, const Tensor& expert, const Tensor& weight,
                   const Tensor& probs, bool renormalize) {
  const int64_t T = probs.dim(0), E = probs.dim(1), k = expert.dim(1);
  const int32_t* idx = expert.i32();
  const float* w = weight.f32();
  const float* dw = dweight.f32();
  const float* p = probs.f32();
  float* dp = dprobs.f32();
  for (int64_t t = 0; t < T; ++t) {
    const int32_t* ti = idx + t * k;
    if (!renormalize) {
      for (int64_t j = 0; j < k; ++j) dp[t * E + ti[j]] += dw[t * k + j];
      continue;
    }
    // w_j = p_j / S with S = sum_i p_i, so dL/dp_j = (dw_j - sum_i dw_i w_i) / S.
    float sum = 0.f, dot = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      sum += p[t * E + ti[j]];
      dot += dw[t * k + j] * w[t * k + j];
    }
    for (int64_t j = 0; j < k; ++j) dp[t * E + ti[j]] += (dw[t * k + j] - dot) / sum;
  }
}

void router_forward(RouterOutput& out, const Tensor& x, const Tensor& w_gate, const MoEConfig& cfg,
                    bool training, uint64_t jitter_stream, int64_t token_offset, const Tensor* selection_bias) {
  const int64_t T = x.dim(0), d = x.dim(1), E = cfg.num_experts, k = cfg.top_k;
  if (training && cfg.jitter_eps > 0.f) {
    out.jitter = Tensor::empty({T, d});
    fill_uniform(out.jitter, 1.f - cfg.jitter_eps, 1.f + cfg.jitter_eps, jitter_stream,
                 static_cast<uint64_t>(token_offset * d));
    out.x_routed = Tensor::empty({T, d});
    const float* xs = x.f32();
    const float* js = out.jitter.f32();
    float* xr = out.x_routed.f32();
    for (int64_t i = 0; i < T * d; ++i) xr[i] = xs[i] * js[i];
  } else {
    out.jitter = Tensor();
    out.x_routed = x;
  }
  out.logits = Tensor::empty({T, E});
  out.probs = Tensor::empty({T, E});
  out.expert = Tensor::empty({T, k}, DType::I32);
  out.weight = Tensor::empty({T, k});
  linear_forward(out.logits, out.x_routed, w_gate, nullptr);
  softmax_forward(out.probs, out.logits);
  topk_forward(out.expert, out.weight, out.probs, k, cfg.renormalize, selection_bias);
}

void router_backward(Tensor* dx, Tensor* dw_gate, Tensor& dprobs, Tensor& dlogits, const Tensor& dweight,
                     const Tensor& w_gate, const RouterOutput& saved, const MoEConfig& cfg) {
  topk_backward(dprobs, dweight, saved.expert, saved.weight, saved.probs, cfg.renormalize);
  softmax_backward(dlogits, dprobs, saved.probs);
  if (!saved.jitter.defined()) {
    linear_backward(dx, dw_gate, nullptr, dlogits, saved.x_routed, w_gate);
    return;
  }
  // The router saw x * jitter, so its input gradient reaches x multiplied by the same noise.
  if (dx != nullptr) {
    Tensor dx_routed = Tensor::zeros(saved.x_routed.shape());
    linear_backward(&dx_routed, dw_gate, nullptr, dlogits, saved.x_routed, w_gate);
    const float* g = dx_routed.f32();
    const float* j = saved.jitter.f32();
    float* out = dx->f32();
    for (int64_t i = 0; i < dx->numel(); ++i) out[i] += g[i] * j[i];
  } else {
    linear_backward(nullptr, dw_gate, nullptr, dlogits, saved.x_routed, w_gate);
  }
}

}  // namespace moe
