// Tests of the single-process MoE layer (core/moe/*) against independent references: finite differences,
// a dense soft-MoE written with plain loops, and the routing / capacity rules recomputed here.
#include "core/moe/moe_layer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/moe/aux_losses.h"
#include "core/moe/dispatch_plan.h"
#include "core/moe/moe_config.h"
#include "core/moe/router.h"
#include "core/ops.h"
#include "core/random.h"
#include "core/tensor.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

constexpr uint64_t kSeed = 1234;
constexpr DropPolicy kDropPolicies[] = {DropPolicy::Position, DropPolicy::PositionByChoice, DropPolicy::Probs};

// ---------------------------------------------------------------------------------------------
// Helpers: data, copies and the independent (double precision, plain loop) references.
// ---------------------------------------------------------------------------------------------

void copy_values(Tensor& dst, const Tensor& src) {
  ASSERT_EQ(dst.shape(), src.shape());
  std::memcpy(dst.f32(), src.f32(), static_cast<size_t>(src.numel()) * sizeof(float));
}

float at(const Tensor& t, int64_t row, int64_t col) { return t.f32()[row * t.dim(1) + col]; }

MoEWeights clone_weights(const MoEWeights& w) { return {w.w_gate.clone(), w.w_in.clone(), w.w_out.clone()}; }

MoEConfig small_config(Activation activation, bool renormalize, double capacity_factor) {
  MoEConfig cfg = moe_test_config(6, 4, 2, 8, activation);
  cfg.renormalize = renormalize;
  cfg.capacity_factor = capacity_factor;
  cfg.eval_capacity_factor = capacity_factor;
  cfg.min_capacity = 0;
  // O(1) logits and expert outputs: routing margins and gradients sit far above float32 noise.
  cfg.init_std = 0.5f;
  return cfg;
}

double ref_gelu(double v) {
  return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
}

// x_t W_in_e in double: (in_cols) pre-activations of expert e for one token. w_in is (E, d, in_cols).
std::vector<double> ref_pre(const MoEConfig& cfg, const Tensor& w_in, int64_t e, const float* x) {
  const int64_t d = cfg.d_model, in_cols = cfg.expert_in_cols();
  const float* w = w_in.f32() + e * d * in_cols;
  std::vector<double> pre(in_cols, 0.0);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t c = 0; c < in_cols; ++c) pre[c] += static_cast<double>(x[i]) * w[i * in_cols + c];
  return pre;
}

// Expert e's FFN of one token, in double: act(x W_in_e) W_out_e, SwiGLU columns laid out [gate | up].
std::vector<double> ref_expert(const MoEConfig& cfg, const MoEWeights& w, int64_t e, const float* x) {
  const int64_t d = cfg.d_model, h = cfg.expert_hidden;
  const std::vector<double> pre = ref_pre(cfg, w.w_in, e, x);
  std::vector<double> act(h);
  for (int64_t j = 0; j < h; ++j) {
    switch (cfg.activation) {
      case Activation::ReLU: act[j] = std::max(pre[j], 0.0); break;
      case Activation::GELU: act[j] = ref_gelu(pre[j]); break;
      case Activation::SwiGLU: act[j] = pre[j] / (1.0 + std::exp(-pre[j])) * pre[h + j]; break;
    }
  }
  const float* wo = w.w_out.f32() + e * h * d;
  std::vector<double> out(d, 0.0);
  for (int64_t j = 0; j < h; ++j)
    for (int64_t c = 0; c < d; ++c) out[c] += act[j] * wo[j * d + c];
  return out;
}

// x_t W_gate in double for one token; `jitter` (d) or null multiplies x first.
std::vector<double> ref_logits(const MoEConfig& cfg, const Tensor& w_gate, const float* x,
                               const float* jitter = nullptr) {
  const int64_t d = cfg.d_model, E = cfg.num_experts;
  std::vector<double> logit(E, 0.0);
  for (int64_t i = 0; i < d; ++i) {
    const double xi = jitter ? static_cast<double>(x[i]) * jitter[i] : x[i];
    for (int64_t e = 0; e < E; ++e) logit[e] += xi * w_gate.f32()[i * E + e];
  }
  return logit;
}

// softmax(x_t W_gate) in double for one token.
std::vector<double> ref_probs(const MoEConfig& cfg, const Tensor& w_gate, const float* x,
                              const float* jitter = nullptr) {
  std::vector<double> logit = ref_logits(cfg, w_gate, x, jitter);
  const double m = *std::max_element(logit.begin(), logit.end());
  double sum = 0.0;
  for (double& l : logit) sum += (l = std::exp(l - m));
  for (double& l : logit) l /= sum;
  return logit;
}

// The k highest entries of p, highest first, ties to the lower index.
std::vector<int32_t> ref_topk(const std::vector<double>& p, int64_t k) {
  std::vector<int32_t> ids(p.size());
  for (size_t e = 0; e < p.size(); ++e) ids[e] = static_cast<int32_t>(e);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  ids.resize(k);
  return ids;
}

// keep[t * k + j] under `policy` with capacity C (C < 0 keeps everything), the obvious way: per
// expert, list its choices in token order (PositionByChoice: all choices j = 0 in token order, then
// j = 1, ...), (Probs) stable-sort them by probability, keep the first C.
std::vector<bool> ref_keep(const std::vector<int32_t>& expert, const std::vector<float>& probs, int64_t T,
                           int64_t k, int64_t E, int64_t C, DropPolicy policy) {
  std::vector<bool> keep(T * k, true);
  if (C < 0) return keep;
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int64_t> list;
    if (policy == DropPolicy::PositionByChoice) {
      for (int64_t j = 0; j < k; ++j)
        for (int64_t t = 0; t < T; ++t)
          if (expert[t * k + j] == e) list.push_back(t * k + j);
    } else {
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j)
          if (expert[t * k + j] == e) list.push_back(t * k + j);
    }
    if (policy == DropPolicy::Probs)
      std::stable_sort(list.begin(), list.end(),
                       [&](int64_t a, int64_t b) { return probs[(a / k) * E + e] > probs[(b / k) * E + e]; });
    for (size_t n = static_cast<size_t>(C); n < list.size(); ++n) keep[list[n]] = false;
  }
  return keep;
}

// Checks every field of `plan` against the routing `expert` (T, k) and the reference keep set.
void check_plan(const DispatchPlan& plan, const std::vector<int32_t>& expert, const std::vector<bool>& keep,
                int64_t T, int64_t k, int64_t E, int64_t C) {
  ASSERT_EQ(plan.num_tokens, T);
  ASSERT_EQ(plan.top_k, k);
  ASSERT_EQ(plan.num_experts, E);
  ASSERT_EQ(plan.capacity, C);
  ASSERT_EQ(plan.routed.size(), static_cast<size_t>(E));
  ASSERT_EQ(plan.kept.size(), static_cast<size_t>(E));
  ASSERT_EQ(plan.offset.size(), static_cast<size_t>(E + 1));
  std::vector<int64_t> routed(E, 0), kept(E, 0);
  int64_t kept_total = 0;
  for (int64_t i = 0; i < T * k; ++i) {
    ++routed[expert[i]];
    kept[expert[i]] += keep[i];
    kept_total += keep[i];
  }
  EXPECT_EQ(plan.offset[0], 0);
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(plan.routed[e], routed[e]) << "expert " << e;
    EXPECT_EQ(plan.kept[e], kept[e]) << "expert " << e;
    if (C >= 0) {
      EXPECT_LE(plan.kept[e], C) << "expert " << e << " keeps more than its capacity";
    }
    EXPECT_EQ(plan.kept[e], C < 0 ? routed[e] : std::min(routed[e], C)) << "expert " << e;
    EXPECT_EQ(plan.offset[e + 1] - plan.offset[e], plan.kept[e]) << "expert " << e;
  }
  ASSERT_EQ(plan.num_kept(), kept_total);
  EXPECT_EQ(plan.num_dropped(), T * k - kept_total);
  ASSERT_EQ(plan.slot.shape(), (Shape{T, k}));
  ASSERT_EQ(plan.slot.dtype(), DType::I32);
  ASSERT_EQ(plan.source_token.shape(), (Shape{kept_total}));
  const int32_t* slot = plan.slot.i32();
  const int32_t* source = plan.source_token.i32();
  std::vector<int> seen(kept_total, 0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = t * k + j, e = expert[i];
      if (!keep[i]) {
        EXPECT_EQ(slot[i], -1) << "choice (" << t << ", " << j << ") should be dropped";
        continue;
      }
      ASSERT_GE(slot[i], plan.offset[e]) << "choice (" << t << ", " << j << ") outside expert " << e;
      ASSERT_LT(slot[i], plan.offset[e + 1]) << "choice (" << t << ", " << j << ") outside expert " << e;
      EXPECT_EQ(source[slot[i]], t) << "row " << slot[i] << " should come from token " << t;
      ++seen[slot[i]];
    }
  }
  for (int64_t m = 0; m < kept_total; ++m)
    EXPECT_EQ(seen[m], 1) << "row " << m << " is not used exactly once";
  for (int64_t e = 0; e < E; ++e)  // inside a segment, rows are in token order
    for (int64_t m = plan.offset[e] + 1; m < plan.offset[e + 1]; ++m)
      EXPECT_LT(source[m - 1], source[m]) << "expert " << e << " segment is not in token order at row " << m;
}

// ---------------------------------------------------------------------------------------------
// Finite differences of the whole layer.
// ---------------------------------------------------------------------------------------------

// One evaluation of L = sum(y * r) + aux_loss + z_loss, with what makes L piecewise: the routing
// (expert ids, slots) and, for ReLU, the sign of every kept pre-activation (its kink). A fresh layer
// per evaluation: with jitter its noise is that of call 0, the same every time.
FdPoint eval_loss(const MoEConfig& cfg, const MoEWeights& w, const Tensor& x, const Tensor& r,
                  bool training) {
  MoELayer layer(cfg, kSeed);
  copy_values(layer.weights.w_gate, w.w_gate);
  copy_values(layer.weights.w_in, w.w_in);
  copy_values(layer.weights.w_out, w.w_out);
  Tensor y = Tensor::zeros(x.shape());
  layer.forward(y, x, training);
  FdPoint point;
  point.loss = layer.stats().aux_loss + layer.stats().z_loss;  // both already in double
  for (int64_t i = 0; i < y.numel(); ++i) point.loss += static_cast<double>(y.f32()[i]) * r.f32()[i];
  point.signature = ints_of(layer.router_output().expert);
  const std::vector<int32_t> slot = ints_of(layer.plan().slot);
  point.signature.insert(point.signature.end(), slot.begin(), slot.end());
  if (cfg.activation == Activation::ReLU) {
    const int64_t k = layer.plan().top_k, d = cfg.d_model;  // E with expert choice
    for (int64_t i = 0; i < x.dim(0) * k; ++i) {
      if (slot[i] < 0) continue;
      for (double v : ref_pre(cfg, w.w_in, point.signature[i], x.f32() + (i / k) * d))
        point.signature.push_back(v > 0.0);
    }
  }
  return point;
}

struct FdCase {
  Activation activation;
  bool renormalize;
  double capacity_factor;  // <= 0: dropless
  DropPolicy policy;
  float jitter_eps;
  double aux_coeff;
  double z_coeff;
  bool zero_r;  // r = 0: L is only the auxiliary losses
  ScoreFunction score = ScoreFunction::Softmax;
  float routed_scaling_factor = 1.0f;
  AuxLossScope scope = AuxLossScope::Local;  // Sequence: the T = 12 tokens are 3 sequences of 4
  Routing routing = Routing::TokenChoice;
  int64_t num_experts = 4;
  int64_t routing_groups = 0;  // > 0: group-limited routing, top_groups groups by group_score
  int64_t top_groups = 1;
  GroupScore group_score = GroupScore::Top2Sum;
};

std::string describe(const FdCase& c) {
  return detail::concat(to_string(c.activation), c.renormalize ? " renorm" : " no-renorm",
                        " cf=", c.capacity_factor, " ", to_string(c.policy), " jitter=", c.jitter_eps,
                        c.zero_r ? " r=0" : "", " ", to_string(c.score), " scale=", c.routed_scaling_factor,
                        " scope=", to_string(c.scope), " ", to_string(c.routing), " E=", c.num_experts,
                        c.routing_groups > 0 ? detail::concat(" groups=", c.routing_groups, " top=", c.top_groups,
                                                              " ", to_string(c.group_score))
                                             : "");
}

// Why h and the tolerances are what they are: the layer computes in float32, so y carries relative
// rounding of ~1e-7 and L = sum(y r) (72 terms, |L| ~ 10, summed here in double) ~1e-6 absolute.
// Central differences with h = 1e-2 turn that into ~1e-4 of noise, while the truncation error
// h^2 f''' / 6 stays ~1e-5 .. 1e-4 for these O(1) weights; a smaller h drowns in rounding noise, a
// larger one in truncation. Gradients are O(0.1 .. 1); atol 1e-3 + rtol 5e-3 is ~10x the largest error
// measured on a correct build and well below the O(1e-2 .. 1) errors a wrong formula makes. With
// r = 0, L is only the aux losses (computed in double from float probabilities, |L| ~ 3, gradients
// ~1e-2), the noise is ~1e-5 and atol 1e-4 + rtol 1e-3 keeps a ~15x margin.
constexpr FdTolerance kFdTol{1e-2f, 1e-3, 5e-3};
constexpr FdTolerance kFdTolAuxOnly{1e-2f, 1e-4, 1e-3};

void run_layer_fd(const FdCase& c) {
  SCOPED_TRACE(describe(c));
  const int64_t T = 12;
  MoEConfig cfg = small_config(c.activation, c.renormalize, c.capacity_factor);
  cfg.drop_policy = c.policy;
  cfg.jitter_eps = c.jitter_eps;
  // Coefficients well above the usual 0.01 / 0.001, so that a wrong aux or z-loss gradient is
  // larger than the tolerance (it is linear in the coefficient).
  cfg.aux_loss_coeff = static_cast<float>(c.aux_coeff);
  cfg.z_loss_coeff = static_cast<float>(c.z_coeff);
  cfg.score_function = c.score;
  cfg.routed_scaling_factor = c.routed_scaling_factor;
  cfg.aux_loss_scope = c.scope;
  cfg.routing = c.routing;
  cfg.seq_len = 4;
  cfg.num_experts = c.num_experts;
  cfg.routing_groups = c.routing_groups;
  cfg.top_groups = c.top_groups;
  cfg.group_score = c.group_score;
  Tensor x = normal_tensor({T, cfg.d_model}, 1.0f, kSeed, "fd.x");
  Tensor r = c.zero_r ? Tensor::zeros({T, cfg.d_model}) : normal_tensor({T, cfg.d_model}, 1.0f, kSeed, "fd.r");

  // Analytic gradients from one forward and backward.
  MoELayer layer(cfg, kSeed);
  MoEWeights w = clone_weights(layer.weights);
  Tensor y = Tensor::zeros({T, cfg.d_model});
  layer.forward(y, x, /*training=*/true);
  if (c.capacity_factor > 0 && c.routing == Routing::TokenChoice) {
    ASSERT_GT(layer.stats().dropped_total, 0) << "the case should drop choices";
  } else {
    ASSERT_EQ(layer.stats().dropped_total, 0);
  }
  Tensor dx = Tensor::zeros({T, cfg.d_model});
  layer.backward(dx, r);
  if (c.zero_r) {  // the aux losses do not depend on the expert weights: their gradient is exactly 0
    for (const Tensor* g : {&layer.grads.w_in, &layer.grads.w_out})
      for (int64_t i = 0; i < g->numel(); ++i) ASSERT_EQ(g->f32()[i], 0.f) << "expert weight gradient " << i;
  }

  auto eval = [&] { return eval_loss(cfg, w, x, r, /*training=*/true); };
  const FdPoint base = eval();
  FdTally tally;
  const FdTolerance tol = c.zero_r ? kFdTolAuxOnly : kFdTol;
  tally += expect_piecewise_gradient("dx", x, dx, eval, base, tol);
  tally += expect_piecewise_gradient("w_gate", w.w_gate, layer.grads.w_gate, eval, base, tol);
  tally += expect_piecewise_gradient("w_in", w.w_in, layer.grads.w_in, eval, base, tol);
  tally += expect_piecewise_gradient("w_out", w.w_out, layer.grads.w_out, eval, base, tol);
  // A perturbation of 1e-2 rarely moves a routing decision or a ReLU kink; many skips would mean the
  // test checks little (or that routing is unstable).
  EXPECT_LT(tally.skipped, (tally.checked + tally.skipped) / 20) << "skipped " << tally.skipped;
  if (::testing::Test::HasFailure()) std::printf("  [%s] %s\n", describe(c).c_str(), tally.summary().c_str());
}

TEST(MoELayerGradient, MatchesFiniteDifferencesForEveryActivationWithAndWithoutDrops) {
  for (Activation act : {Activation::ReLU, Activation::GELU, Activation::SwiGLU})
    for (bool renormalize : {true, false}) {
      run_layer_fd({act, renormalize, 0.75, DropPolicy::Position, 0.0f, 0.5, 0.1, false});  // drops
      run_layer_fd({act, renormalize, 0.75, DropPolicy::Probs, 0.0f, 0.5, 0.1, false});     // drops
      run_layer_fd({act, renormalize, 0.0, DropPolicy::Position, 0.0f, 0.5, 0.1, false});   // dropless
    }
}

TEST(MoELayerGradient, AuxiliaryLossGradientsAloneMatchFiniteDifferences) {
  // r = 0 isolates the load-balancing and z-loss paths: any error there is not hidden under the
  // larger expert gradients, and the expert weights must get exactly zero gradient.
  for (bool renormalize : {true, false})
    run_layer_fd({Activation::GELU, renormalize, 0.75, DropPolicy::Position, 0.0f, 1.0, 1.0, true});
}

TEST(MoELayerGradient, JitteredRouterMatchesFiniteDifferences) {
  // Fresh layers with the same seed draw the same jitter on their first call, so L is a fixed smooth
  // function of x and the weights; this covers the router backward's multiplication by the noise.
  run_layer_fd({Activation::GELU, true, 0.0, DropPolicy::Position, 0.3f, 0.5, 0.1, false});
  run_layer_fd({Activation::SwiGLU, false, 0.75, DropPolicy::Position, 0.3f, 0.5, 0.1, false});
}

TEST(MoELayerGradient, SigmoidScoringAndTheSequenceScopeMatchFiniteDifferences) {
  // Sigmoid scores (DeepSeek-V3) with and without renormalisation and with a routed scaling factor,
  // the sequence scope with either scoring, and r = 0 for the aux losses alone (the load-balancing
  // loss through the normalised sigmoid scores, the z-loss through softmax(logits)).
  for (bool renormalize : {true, false}) {
    run_layer_fd({Activation::SwiGLU, renormalize, 0.75, DropPolicy::Position, 0.0f, 0.5, 0.1, false,
                  ScoreFunction::Sigmoid, 2.5f});
    run_layer_fd({Activation::GELU, renormalize, 0.0, DropPolicy::Probs, 0.0f, 0.5, 0.1, false,
                  ScoreFunction::Sigmoid, 1.0f, AuxLossScope::Sequence});
    run_layer_fd({Activation::GELU, renormalize, 0.75, DropPolicy::Position, 0.0f, 1.0, 1.0, true,
                  ScoreFunction::Sigmoid, 1.0f, AuxLossScope::Sequence});
    run_layer_fd({Activation::ReLU, renormalize, 0.75, DropPolicy::Position, 0.0f, 1.0, 1.0, true,
                  ScoreFunction::Softmax, 1.0f, AuxLossScope::Sequence});
  }
  run_layer_fd({Activation::ReLU, true, 0.75, DropPolicy::Probs, 0.3f, 0.5, 0.1, false, ScoreFunction::Softmax,
                1.5f});
}

TEST(MoELayerGradient, ExpertChoiceMatchesFiniteDifferences) {
  // The gradient reaches the router through the combine weights, which are the chosen softmax scores;
  // with jitter, and with r = 0 for the z-loss alone (expert choice has no load-balancing loss).
  // C = ceil(0.75 * 2 * 12 / 4) = 5 of the 12 tokens per expert.
  for (Activation act : {Activation::ReLU, Activation::GELU, Activation::SwiGLU})
    run_layer_fd({act, true, 0.75, DropPolicy::Position, 0.0f, 0.0, 0.1, false, ScoreFunction::Softmax, 1.0f,
                  AuxLossScope::Local, Routing::ExpertChoice});
  run_layer_fd({Activation::GELU, false, 0.75, DropPolicy::Position, 0.3f, 0.0, 0.1, false, ScoreFunction::Softmax,
                1.0f, AuxLossScope::Local, Routing::ExpertChoice});
  run_layer_fd({Activation::GELU, true, 0.75, DropPolicy::Position, 0.0f, 0.0, 1.0, true, ScoreFunction::Softmax,
                1.0f, AuxLossScope::Local, Routing::ExpertChoice});
}

TEST(MoELayerGradient, GroupLimitedRoutingMatchesFiniteDifferences) {
  // 8 experts in 4 groups of 2, each token keeping 2 groups (top-2 sum) or 2 groups of 4 keeping 1 (max):
  // the group choice only masks the selection, so the gradients keep their form (none through the choice).
  for (bool renormalize : {true, false}) {
    FdCase c{Activation::SwiGLU, renormalize, 0.75, DropPolicy::Position, 0.0f, 0.5, 0.1, false};
    c.num_experts = 8, c.routing_groups = 4, c.top_groups = 2;
    run_layer_fd(c);
    c.capacity_factor = 0.0;  // dropless
    run_layer_fd(c);
    FdCase s{Activation::GELU, renormalize, 0.75, DropPolicy::Probs, 0.0f, 1.0, 1.0, false, ScoreFunction::Sigmoid,
             2.5f};
    s.num_experts = 8, s.routing_groups = 2, s.top_groups = 1, s.group_score = GroupScore::Max;
    run_layer_fd(s);
    s.zero_r = true;  // the aux losses alone
    run_layer_fd(s);
  }
}

TEST(MoELayerGradient, ReusedLayerMatchesAFreshLayerAcrossCalls) {
  // The layer keeps its scratch buffers between calls; a call after calls of other sizes must give
  // what a fresh layer gives (catches a buffer that is resized but not re-zeroed before +=), in both
  // precisions (bf16 keeps more buffers: the weights' copies, the rows before and after rounding).
  for (Precision precision : {Precision::FP32, Precision::BF16}) {
    MoEConfig cfg = small_config(Activation::SwiGLU, true, 0.75);
    cfg.precision = precision;
    const int64_t d = cfg.d_model;
    MoELayer reused(cfg, kSeed);
    int call = 0;
    for (int64_t T : {20, 7, 12, 20}) {
      SCOPED_TRACE(detail::concat(to_string(precision), " call ", call, " T=", T));
      Tensor x = normal_tensor({T, d}, 1.0f, kSeed, detail::concat("reuse.x", call));
      Tensor dy = normal_tensor({T, d}, 1.0f, kSeed, detail::concat("reuse.dy", call));
      ++call;
      MoELayer fresh(cfg, kSeed);
      Tensor y_fresh = Tensor::zeros({T, d}), dx_fresh = Tensor::zeros({T, d});
      fresh.forward(y_fresh, x, true);
      fresh.backward(dx_fresh, dy);
      Tensor y = Tensor::zeros({T, d}), dx = Tensor::zeros({T, d});
      for (Tensor* g : {&reused.grads.w_gate, &reused.grads.w_in, &reused.grads.w_out}) g->zero();
      reused.forward(y, x, true);
      reused.backward(dx, dy);
      // Same arithmetic on the same data; 1e-6 relative allows a GEMM kernel choice that depends on
      // buffer alignment, while a stale buffer is off by O(1).
      auto expect_close = [](const Tensor& a, const Tensor& b, const char* name) {
        const double scale = max_abs(b);
        for (int64_t i = 0; i < b.numel(); ++i)
          EXPECT_NEAR(a.f32()[i], b.f32()[i], 1e-6 * scale + 1e-30) << name << "[" << i << "]";
      };
      expect_close(y, y_fresh, "y");
      expect_close(dx, dx_fresh, "dx");
      expect_close(reused.grads.w_gate, fresh.grads.w_gate, "w_gate");
      expect_close(reused.grads.w_in, fresh.grads.w_in, "w_in");
      expect_close(reused.grads.w_out, fresh.grads.w_out, "w_out");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 mixed precision against the float32 layer.
// ---------------------------------------------------------------------------------------------

// The bf16 layer and the float32 layer on the same weights and inputs. The router is float32 in both,
// so routing, plan and losses are identical. The expert path rounds to bfloat16 (unit roundoff
// u = 2^-8, a rounded value off by at most u relative, ~u/sqrt(3) RMS for values spread over binades)
// x and W_in, the activation and W_out, the expert output rows; in backward the output-gradient rows,
// the activation gradient, and the input-gradient rows. Each output or gradient element passes through
// at most six such roundings, each moving every term of its sums by <= u relative; with random signs
// the sums' relative RMS error is then about sqrt(6/3) u ~ 1.4 u. The bound, 4 u, leaves ~3x margin;
// a wrong row, expert or weight copy is off by O(1). The lower bound, u / 8, shows bfloat16 was used:
// float32 products would agree to ~1e-6. Measured: 0.85-1.2 u. ReLU's derivative jumps at 0, and a
// pre-activation within rounding of 0 (~0.3% of them here) changes side, moving those elements of dx
// and grad w_in by O(1) (measured 13-19 u over the tensor): for ReLU those two are not compared; the
// path computing them is the same for the smooth activations.
TEST(MoELayerBf16, MatchesTheFloat32LayerWithinBf16Rounding) {
  constexpr double u = 1.0 / 256;
  for (Activation act : {Activation::ReLU, Activation::GELU, Activation::SwiGLU})
    for (double capacity_factor : {0.75, 0.0}) {
      MoEConfig cfg = small_config(act, true, capacity_factor);
      cfg.d_model = 32;
      cfg.expert_hidden = 48;
      cfg.init_std = 0.2f;  // O(1) expert outputs for d = 32
      SCOPED_TRACE(detail::concat(to_string(act), " capacity_factor=", capacity_factor));
      const int64_t T = 40, d = cfg.d_model;
      const Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "bf16.x"), dy = normal_tensor({T, d}, 1.0f, kSeed, "bf16.dy");
      MoEConfig cfg16 = cfg;
      cfg16.precision = Precision::BF16;
      MoELayer fp32(cfg, kSeed), bf16(cfg16, kSeed);
      Tensor y = Tensor::zeros({T, d}), y16 = Tensor::zeros({T, d});
      Tensor dx = Tensor::zeros({T, d}), dx16 = Tensor::zeros({T, d});
      fp32.forward(y, x, true);
      bf16.forward(y16, x, true);
      fp32.backward(dx, dy);
      bf16.backward(dx16, dy);
      EXPECT_EQ(ints_of(bf16.plan().slot), ints_of(fp32.plan().slot)) << "routing differs";
      EXPECT_EQ(bf16.stats().aux_loss, fp32.stats().aux_loss);
      EXPECT_EQ(bf16.stats().z_loss, fp32.stats().z_loss);
      const std::pair<const char*, std::pair<const Tensor*, const Tensor*>> outputs[] = {
          {"y", {&y16, &y}}, {"dx", {&dx16, &dx}}, {"grad w_gate", {&bf16.grads.w_gate, &fp32.grads.w_gate}},
          {"grad w_in", {&bf16.grads.w_in, &fp32.grads.w_in}}, {"grad w_out", {&bf16.grads.w_out, &fp32.grads.w_out}}};
      for (const auto& [name, pair] : outputs) {
        if (act == Activation::ReLU && (std::string(name) == "dx" || std::string(name) == "grad w_in")) continue;
        const double error = relative_rms_error(*pair.first, *pair.second);
        EXPECT_LT(error, 4 * u) << name;
        EXPECT_GT(error, u / 8) << name << ": no bfloat16 rounding visible";
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Router pieces in isolation, against central differences of their forwards.
// ---------------------------------------------------------------------------------------------

// Router pieces are checked with h = 1e-3: their forwards are cheap closed forms evaluated in
// double (aux losses) or a single float division (top-k), so FD noise is ~1e-7 / 1e-3 = 1e-4 relative
// at worst (measured 8e-5 for top-k) and truncation ~h^2 = 1e-6; tolerance 1e-3 abs + 1e-3 rel is 10x that.
constexpr float kPieceStep = 1e-3f;
constexpr double kPieceTol = 1e-3;

// Row-wise softmax of (T, E) logits, computed in double and rounded to float.
Tensor softmax_rows(const Tensor& logits) {
  const int64_t T = logits.dim(0), E = logits.dim(1);
  Tensor probs = Tensor::empty({T, E});
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(static_cast<double>(logits.f32()[t * E + e]));
    for (int64_t e = 0; e < E; ++e)
      probs.f32()[t * E + e] =
          static_cast<float>(std::exp(static_cast<double>(logits.f32()[t * E + e])) / sum);
  }
  return probs;
}

// Random probability rows (T, E): softmax of N(0, 1) logits.
Tensor random_probs(int64_t T, int64_t E, const char* name) {
  return softmax_rows(normal_tensor({T, E}, 1.0f, kSeed, name));
}

TEST(RouterPieces, TopkForwardPicksTheHighestProbabilitiesAndRenormalises) {
  const int64_t T = 4, E = 4, k = 2;
  // Row 1 has a tie between experts 1 and 3: the lower id must come first. Row 3 has a tie at the
  // cut (experts 0 and 2 at 0.3 for the second place): the lower id is chosen.
  Tensor probs = Tensor::from({T, E}, {0.1f, 0.2f, 0.3f, 0.4f,    //
                                       0.1f, 0.35f, 0.2f, 0.35f,  //
                                       0.7f, 0.1f, 0.15f, 0.05f,  //
                                       0.3f, 0.4f, 0.3f, 0.0f});
  for (bool renormalize : {false, true}) {
    Tensor expert = Tensor::empty({T, k}, DType::I32), weight = Tensor::empty({T, k});
    topk_forward(expert, weight, probs, k, renormalize);
    EXPECT_EQ(ints_of(expert), (std::vector<int32_t>{3, 2, 1, 3, 0, 2, 1, 0}));
    const std::vector<float> raw = {0.4f, 0.3f, 0.35f, 0.35f, 0.7f, 0.15f, 0.4f, 0.3f};
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j) {
        const double sum = static_cast<double>(raw[t * k]) + raw[t * k + 1];
        const double want = renormalize ? raw[t * k + j] / sum : raw[t * k + j];
        EXPECT_NEAR(weight.f32()[t * k + j], want, 1e-6) << t << "," << j;  // one float division
      }
  }
}

TEST(RouterPieces, TopkBackwardMatchesFiniteDifferences) {
  const int64_t T = 6, E = 5, k = 2;
  for (bool renormalize : {false, true}) {
    SCOPED_TRACE(renormalize ? "renormalize" : "raw probabilities");
    Tensor probs = random_probs(T, E, "topk.probs");
    Tensor dweight = normal_tensor({T, k}, 1.0f, kSeed, "topk.dweight");
    Tensor expert = Tensor::empty({T, k}, DType::I32), weight = Tensor::empty({T, k});
    topk_forward(expert, weight, probs, k, renormalize);
    const std::vector<int32_t> chosen = ints_of(expert);
    Tensor dprobs = Tensor::empty({T, E});
    dprobs.fill(0.25f);  // the backward accumulates: the 0.25 must survive underneath
    topk_backward(dprobs, dweight, expert, weight, probs, renormalize);

    Tensor e2 = Tensor::empty({T, k}, DType::I32), w2 = Tensor::empty({T, k});
    bool moved = false;
    auto loss = [&] {
      topk_forward(e2, w2, probs, k, renormalize);
      moved |= ints_of(e2) != chosen;
      double sum = 0.0;
      for (int64_t i = 0; i < T * k; ++i) sum += static_cast<double>(w2.f32()[i]) * dweight.f32()[i];
      return sum;
    };
    for (int64_t i = 0; i < T * E; ++i) {
      moved = false;
      const double fd = central_difference(probs, i, kPieceStep, loss);
      ASSERT_FALSE(moved) << "a step of 1e-3 flipped a top-k choice; choose other data";
      EXPECT_NEAR(dprobs.f32()[i] - 0.25, fd, kPieceTol * (1.0 + std::abs(fd))) << "probs[" << i << "]";
    }
  }
}

// The repro: logits [0, -120, -130] (probabilities exp(-120) and exp(-130) underflow to 0 in
// float32) and aux-free biases [0, 2, 2] that make the top 2 pick experts 1 and 2. Renormalised, their
// weights were 0/0 = NaN; they are 1/k each, and the weights pass no gradient to that row's logits.
// Row 1 (logits [0, 1, 0.5], the same biased choice) renormalises as usual.
TEST(RouterPieces, BiasedChoiceOfUnderflowedProbabilitiesGetsEqualWeights) {
  MoEConfig cfg = moe_test_config(2, 3, 2, 4, Activation::GELU);
  const Tensor x = Tensor::from({2, 2}, {1.f, 0.f, 0.f, 1.f});
  const Tensor w_gate = Tensor::from({2, 3}, {0.f, -120.f, -130.f, 0.f, 1.f, 0.5f});
  const Tensor bias = Tensor::from({3}, {0.f, 2.f, 2.f});
  const Tensor dweight = Tensor::from({2, 2}, {0.75f, -0.5f, 0.25f, 1.5f});
  for (bool renormalize : {true, false}) {
    SCOPED_TRACE(renormalize ? "renormalize" : "raw probabilities");
    cfg.renormalize = renormalize;
    RouterOutput out;
    router_forward(out, x, w_gate, cfg, false, 0, 0, &bias);
    ASSERT_EQ(at(out.probs, 0, 1), 0.f) << "the test needs probabilities that underflow";
    ASSERT_EQ(at(out.probs, 0, 2), 0.f);
    EXPECT_EQ(ints_of(out.expert), (std::vector<int32_t>{1, 2, 1, 2}));
    const double p1 = at(out.probs, 1, 1), p2 = at(out.probs, 1, 2);
    const std::vector<double> want = renormalize ? std::vector<double>{0.5, 0.5, p1 / (p1 + p2), p2 / (p1 + p2)}
                                                 : std::vector<double>{0.0, 0.0, p1, p2};
    for (int64_t i = 0; i < 4; ++i) EXPECT_NEAR(out.weight.f32()[i], want[i], 1e-6) << i;  // one division

    Tensor dprobs = Tensor::zeros({2, 3}), dlogits = Tensor::zeros({2, 3}), dw_gate = Tensor::zeros({2, 3});
    router_backward(nullptr, &dw_gate, dprobs, dlogits, dweight, w_gate, out, cfg);
    // Row 0 of dw_gate is x's feature 0 (token 0 only) times token 0's logit gradient: the constant equal
    // weights give exactly 0, and the raw weights p * dweight, with p = 0, exactly 0 through the softmax.
    for (int64_t e = 0; e < 3; ++e) EXPECT_EQ(at(dw_gate, 0, e), 0.f) << e;
    double row1 = 0.0;
    for (int64_t e = 0; e < 3; ++e) {
      EXPECT_TRUE(std::isfinite(at(dw_gate, 1, e))) << e;
      row1 += std::abs(at(dw_gate, 1, e));
    }
    EXPECT_GT(row1, 0.01) << "token 1's weights still train the router";
  }
}

// Subnormal probabilities count as underflowed too: their ratios carry only a few bits, and the
// backward's 1 / sum would overflow float32. A sum of FLT_MIN and above renormalises as usual.
TEST(RouterPieces, TopkTreatsASubnormalSumOfChosenProbabilitiesAsUnderflowed) {
  const Tensor probs = Tensor::from({2, 3}, {1.f, 3e-40f, 1e-40f, 1.f, 3 * FLT_MIN, FLT_MIN});
  const Tensor bias = Tensor::from({3}, {0.f, 2.f, 2.f});
  Tensor expert = Tensor::empty({2, 2}, DType::I32), weight = Tensor::empty({2, 2});
  topk_forward(expert, weight, probs, 2, true, &bias);
  EXPECT_EQ(ints_of(expert), (std::vector<int32_t>{1, 2, 1, 2}));
  EXPECT_EQ(std::vector<float>(weight.f32(), weight.f32() + 4), (std::vector<float>{0.5f, 0.5f, 0.75f, 0.25f}));
  Tensor dprobs = Tensor::zeros({2, 3});
  topk_backward(dprobs, Tensor::from({2, 2}, {1.f, -1.f, 1.f, -1.f}), expert, weight, probs, true);
  for (int64_t e = 0; e < 3; ++e) EXPECT_EQ(at(dprobs, 0, e), 0.f) << e;
  EXPECT_TRUE(std::isfinite(at(dprobs, 1, 1)) && at(dprobs, 1, 1) > 0.f);
}

TEST(RouterPieces, LoadBalancingLossBackwardMatchesFiniteDifferences) {
  const int64_t T = 7, E = 4, k = 2;
  const double coeff = 0.3;
  Tensor probs = random_probs(T, E, "lb.probs");
  Tensor expert = Tensor::empty({T, k}, DType::I32), weight = Tensor::empty({T, k});
  topk_forward(expert, weight, probs, k, true);
  Tensor dprobs = Tensor::empty({T, E});
  dprobs.fill(-0.5f);  // accumulation check
  const double dloss = 1.7;
  load_balancing_loss_backward(dprobs, load_balance_terms(probs, expert), coeff, dloss);
  // The choice counts are held fixed (they are not differentiable); only P moves with probs.
  auto loss = [&] { return dloss * load_balancing_loss(load_balance_terms(probs, expert), coeff); };
  for (int64_t i = 0; i < T * E; ++i) {
    const double fd = central_difference(probs, i, kPieceStep, loss);
    EXPECT_NEAR(dprobs.f32()[i] + 0.5, fd, kPieceTol * (1.0 + std::abs(fd))) << "probs[" << i << "]";
  }
}

TEST(RouterPieces, ZLossBackwardMatchesFiniteDifferences) {
  const int64_t T = 5, E = 6;
  const double coeff = 0.2, mean_over = 12.5, dloss = 0.8;  // mean_over as a global token count
  Tensor logits = normal_tensor({T, E}, 2.0f, kSeed, "z.logits");
  const Tensor probs = softmax_rows(logits);
  Tensor dlogits = Tensor::empty({T, E});
  dlogits.fill(0.125f);  // accumulation check
  z_loss_backward(dlogits, logits, probs, coeff, mean_over, dloss);
  auto loss = [&] { return dloss * z_loss_forward(logits, coeff, mean_over); };
  for (int64_t i = 0; i < T * E; ++i) {
    const double fd = central_difference(logits, i, kPieceStep, loss);
    EXPECT_NEAR(dlogits.f32()[i] - 0.125, fd, kPieceTol * (1.0 + std::abs(fd))) << "logits[" << i << "]";
  }
}

// ---------------------------------------------------------------------------------------------
// Auxiliary losses: exact values.
// ---------------------------------------------------------------------------------------------

TEST(AuxLosses, LoadBalancingLossIsCoeffWhenRoutingIsUniform) {
  const int64_t T = 8, E = 4, k = 2;
  const double coeff = 0.01;
  Tensor probs = Tensor::empty({T, E});
  probs.fill(0.25f);  // exactly 1/E
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < T; ++t)
    ids.insert(ids.end(), {static_cast<int32_t>(t % E), static_cast<int32_t>((t + 1) % E)});
  const LoadBalanceTerms terms = load_balance_terms(probs, Tensor::from_ints({T, k}, ids));
  EXPECT_EQ(terms.choice_count, (std::vector<double>{4, 4, 4, 4}));
  EXPECT_EQ(terms.prob_sum, (std::vector<double>{2, 2, 2, 2}));
  EXPECT_EQ(terms.num_choices, 16);
  EXPECT_EQ(terms.num_tokens, 8);
  // Every quantity is exact in binary, so only the final multiplication by coeff may round.
  EXPECT_DOUBLE_EQ(load_balancing_loss(terms, coeff), coeff);
  EXPECT_EQ(load_balancing_loss(LoadBalanceTerms{}, coeff), 0.0) << "no tokens, no loss";
}

TEST(AuxLosses, LoadBalancingLossGrowsToCoeffTimesEWhenOneExpertTakesEverything) {
  const double coeff = 0.01;
  const int64_t E = 4;
  LoadBalanceTerms terms;
  terms.num_tokens = 10;
  terms.num_choices = 10;  // k = 1
  terms.choice_count = {10, 0, 0, 0};
  terms.prob_sum = {10, 0, 0, 0};  // every token puts probability 1 on expert 0
  EXPECT_DOUBLE_EQ(load_balancing_loss(terms, coeff), coeff * E);
  // Halfway: expert 0 takes 5 of 10 choices with P_0 = 0.5, the rest spread evenly.
  terms.choice_count = {5, 5.0 / 3, 5.0 / 3, 5.0 / 3};
  terms.prob_sum = {5, 5.0 / 3, 5.0 / 3, 5.0 / 3};
  const double half = load_balancing_loss(terms, coeff);
  // E * (0.5^2 + 3 (1/6)^2) = 4 * (1/4 + 1/12) = 4/3.
  EXPECT_NEAR(half, coeff * 4.0 / 3.0, 1e-15);  // double rounding of a few operations
  EXPECT_GT(half, coeff);
  EXPECT_LT(half, coeff * E);
}

TEST(AuxLosses, ZLossIsCoeffTimesMeanSquaredLogSumExp) {
  const int64_t T = 9, E = 5;
  const double coeff = 0.001;
  Tensor logits = normal_tensor({T, E}, 3.0f, kSeed, "zloss.logits");
  double sum = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    double s = 0.0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(static_cast<double>(logits.f32()[t * E + e]));
    sum += std::log(s) * std::log(s);
  }
  // Relative 1e-6: the library subtracts the row max in float32 before exp (measured ~2e-10 off);
  // a wrong mean, a missing square or a missing coeff is off by O(1) relative.
  const double want = coeff * sum / T;
  EXPECT_NEAR(z_loss_forward(logits, coeff, T), want, 1e-6 * want);
  EXPECT_NEAR(z_loss_forward(logits, coeff, 3.0 * T), want / 3.0, 1e-6 * want / 3.0);
  EXPECT_EQ(z_loss_forward(logits, coeff, 0.0), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Capacity.
// ---------------------------------------------------------------------------------------------

TEST(Capacity, ExpertCapacityFormula) {
  EXPECT_EQ(expert_capacity(1.25, 4096, 2, 8, 4), 1280);  // exact: must not round up to 1281
  EXPECT_EQ(expert_capacity(1.0, 10, 1, 4, 0), 3);        // ceil(2.5)
  EXPECT_EQ(expert_capacity(1.0, 9, 1, 4, 0), 3);         // ceil(2.25)
  EXPECT_EQ(expert_capacity(1.0, 8, 2, 4, 0), 4);         // exact 4, not 5
  EXPECT_EQ(expert_capacity(1.1, 50, 2, 2, 0), 55);       // 1.1 * 100 / 2 = 55.00000000000001 in double
  EXPECT_EQ(expert_capacity(2.0, 12, 2, 4, 0), 12);
  EXPECT_EQ(expert_capacity(1.0, 4, 1, 8, 4), 4);   // ceil(0.5) = 1 < min_capacity 4
  EXPECT_EQ(expert_capacity(1.0, 40, 1, 8, 4), 5);  // 5 > min_capacity 4
  EXPECT_EQ(expert_capacity(1.0, 4, 1, 8, 0), 1);
  EXPECT_EQ(expert_capacity(0.0, 4096, 2, 8, 4), -1);  // dropless
  EXPECT_EQ(expert_capacity(-1.0, 4096, 2, 8, 4), -1);
}

// Against an independent reference: a factor built as a / 100, whose exact capacity is the integer
// ceiling of a * k * T / (100 E), over sizes up to 2^40 tokens, where a double product has lost the
// last digits of the answer.
TEST(Capacity, ExactForTwoDecimalFactorsUpToLargeTokenCounts) {
  const int64_t token_counts[] = {1, 7, 100, 4096, 83886120, 13289592140, 1099511627776 + 3};
  int64_t mismatches = 0;
  for (int64_t a = 1; a <= 400; ++a)
    for (int64_t T : token_counts)
      for (int64_t k = 1; k <= 4; ++k)
        for (int64_t E : {1, 2, 3, 8, 64}) {
          const int64_t num = a * k * T, den = 100 * E;  // < 2^51
          const int64_t want = (num + den - 1) / den;
          const int64_t got = expert_capacity(static_cast<double>(a) / 100.0, T, k, E, 0);
          if (got != want && ++mismatches <= 5)
            ADD_FAILURE() << "capacity_factor " << a << "/100, T " << T << ", k " << k << ", E " << E << ": got "
                          << got << ", want " << want;
        }
  EXPECT_EQ(mismatches, 0);
}

TEST(Capacity, ExactWhereDoubleRoundingWasOffByOne) {
  // 1.1 * 2 * 83886120 / 8 = 23068683 exactly (~2^24.5); ceil(double product - 1e-9) gave 23068684.
  EXPECT_EQ(expert_capacity(1.1, 83886120, 2, 8, 0), 23068683);
  EXPECT_EQ(expert_capacity(1.1, 83886121, 2, 8, 0), 23068684);  // 23068683.275
  EXPECT_EQ(expert_capacity(0.55, 13289592140, 2, 1, 0), 14618551354);  // was 14618551355
  // The decimal a factor reads back as counts, not the binary double: 0.1 + 0.2 is the double
  // 0.30000000000000004, whose shortest decimal has 17 digits.
  EXPECT_EQ(expert_capacity(0.1 + 0.2, 10, 1, 1, 0), 4);
  EXPECT_EQ(expert_capacity(0.3, 10, 1, 1, 0), 3);
  // Extremes: no overflow, no zero capacity for a positive product.
  EXPECT_EQ(expert_capacity(1e300, 4096, 2, 8, 0), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(expert_capacity(1e-300, 4096, 2, 8, 0), 1);
  EXPECT_EQ(expert_capacity(5e-324, 1, 1, 1, 0), 1);  // the smallest subnormal double
  EXPECT_EQ(expert_capacity(1.25, 0, 2, 8, 0), 0);
  EXPECT_EQ(expert_capacity(1.25, 0, 2, 8, 4), 4);
}

TEST(Capacity, TrainAndEvalUseTheirOwnCapacityFactor) {
  MoEConfig cfg = small_config(Activation::GELU, true, 1.0);
  cfg.capacity_factor = 1.0;  // C = ceil(1.0 * 2 * 12 / 4) = 6
  cfg.eval_capacity_factor = 2.0;   // C = 12
  const int64_t T = 12;
  Tensor x = normal_tensor({T, cfg.d_model}, 1.0f, kSeed, "cap.x");
  Tensor y = Tensor::zeros({T, cfg.d_model});
  MoELayer layer(cfg, kSeed);
  layer.forward(y, x, true);
  EXPECT_EQ(layer.stats().capacity, 6);
  EXPECT_EQ(layer.plan().capacity, 6);
  layer.forward(y, x, false);
  EXPECT_EQ(layer.stats().capacity, 12);
  EXPECT_EQ(layer.plan().capacity, 12);
  EXPECT_EQ(layer.stats().dropped_total, 0) << "C = 12 = T cannot drop with distinct experts per token";
  cfg.eval_capacity_factor = 0.0;
  MoELayer dropless(cfg, kSeed);
  dropless.forward(y, x, false);
  EXPECT_EQ(dropless.stats().capacity, -1);
  EXPECT_EQ(dropless.stats().dropped_total, 0);
  dropless.forward(y, x, true);
  EXPECT_EQ(dropless.stats().capacity, 6);
}

// ---------------------------------------------------------------------------------------------
// Routing invariants.
// ---------------------------------------------------------------------------------------------

// Random distinct expert ids per token, skewed towards low ids so some experts overflow and others
// do not; probabilities from a few levels so that ties are common.
void random_routing(int64_t T, int64_t k, int64_t E, uint64_t stream, Tensor& expert, Tensor& probs) {
  expert = Tensor::empty({T, k}, DType::I32);
  probs = Tensor::empty({T, E});
  uint64_t counter = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> weight(E);
    for (int64_t e = 0; e < E; ++e) weight[e] = 1.0 / (1.0 + e);
    for (int64_t j = 0; j < k; ++j) {  // sample without replacement, proportional to weight
      double total = 0.0;
      for (double v : weight) total += v;
      double u = uniform01(stream, counter++) * total;
      int64_t pick = 0;
      while (pick < E - 1 && (weight[pick] == 0.0 || u >= weight[pick])) u -= weight[pick++];
      while (weight[pick] == 0.0) --pick;  // rounding fell off the end: take the last still available
      expert.i32()[t * k + j] = static_cast<int32_t>(pick);
      weight[pick] = 0.0;
    }
    for (int64_t e = 0; e < E; ++e)
      probs.f32()[t * E + e] =
          static_cast<float>(1 + static_cast<int>(uniform01(stream, counter++) * 4)) / 8.f;
  }
}

TEST(DispatchPlan, KeepsTheReferenceSetUnderEveryPolicyAndCapacity) {
  struct Case {
    int64_t T, k, E, C;
  };
  for (const Case& c : {Case{40, 2, 5, 9}, Case{40, 2, 5, 0}, Case{40, 2, 5, 1}, Case{40, 2, 5, 100},
                        Case{40, 2, 5, -1}, Case{33, 1, 3, 7}, Case{25, 3, 6, 6}, Case{16, 4, 4, 10}})
    for (DropPolicy policy : kDropPolicies) {
      SCOPED_TRACE(detail::concat("T=", c.T, " k=", c.k, " E=", c.E, " C=", c.C, " ", to_string(policy)));
      Tensor expert, probs;
      random_routing(c.T, c.k, c.E, stream_id(kSeed, detail::concat("plan", c.T, c.k, c.E, c.C)), expert,
                     probs);
      const std::vector<int32_t> ids = ints_of(expert);
      const std::vector<bool> keep = ref_keep(ids, floats_of(probs), c.T, c.k, c.E, c.C, policy);
      const DispatchPlan plan = make_dispatch_plan(expert, probs, c.E, c.C, policy);
      check_plan(plan, ids, keep, c.T, c.k, c.E, c.C);
      if (c.C < 0) {
        EXPECT_EQ(plan.num_dropped(), 0);
      }
    }
}

TEST(DispatchPlan, PoliciesDifferOnAHandBuiltCase) {
  // Expert 0 is chosen by tokens 0..3 with probabilities 0.2, 0.9, 0.5, 0.9; capacity 2.
  // Position keeps tokens 0 and 1; Probs keeps 1 and 3 (0.9 tie: the earlier token 1 ranks first).
  const int64_t T = 4, k = 1, E = 2;
  Tensor expert = Tensor::from_ints({T, k}, {0, 0, 0, 0});
  Tensor probs = Tensor::from({T, E}, {0.2f, 0.8f, 0.9f, 0.1f, 0.5f, 0.5f, 0.9f, 0.1f});
  const DispatchPlan position = make_dispatch_plan(expert, probs, E, 2, DropPolicy::Position);
  EXPECT_EQ(ints_of(position.slot), (std::vector<int32_t>{0, 1, -1, -1}));
  EXPECT_EQ(ints_of(position.source_token), (std::vector<int32_t>{0, 1}));
  const DispatchPlan by_probs = make_dispatch_plan(expert, probs, E, 2, DropPolicy::Probs);
  EXPECT_EQ(ints_of(by_probs.slot), (std::vector<int32_t>{-1, 0, -1, 1}));
  EXPECT_EQ(ints_of(by_probs.source_token), (std::vector<int32_t>{1, 3}));
  const DispatchPlan one = make_dispatch_plan(expert, probs, E, 1, DropPolicy::Probs);
  EXPECT_EQ(ints_of(one.slot), (std::vector<int32_t>{-1, 0, -1, -1}))
      << "tie at 0.9 goes to the earlier token";
  EXPECT_EQ(one.routed, (std::vector<int64_t>{4, 0}));
  EXPECT_EQ(one.kept, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(one.offset, (std::vector<int64_t>{0, 1, 1}));
}

TEST(DispatchPlan, PositionByChoiceServesEveryFirstChoiceBeforeAnySecond) {
  // k = 2, C = 2. Expert 0 is token 0's second choice and tokens 1 and 2's first. Position (token
  // order) keeps tokens 0 and 1 and drops token 2's first choice; PositionByChoice keeps the two first
  // choices and drops token 0's second. Inside a segment the rows stay in token order either way.
  const int64_t T = 3, k = 2, E = 3;
  Tensor expert = Tensor::from_ints({T, k}, {1, 0, 0, 2, 0, 1});
  Tensor probs = Tensor::from({T, E}, {0.3f, 0.6f, 0.1f, 0.6f, 0.1f, 0.3f, 0.6f, 0.3f, 0.1f});
  const DispatchPlan position = make_dispatch_plan(expert, probs, E, 2, DropPolicy::Position);
  EXPECT_EQ(ints_of(position.slot), (std::vector<int32_t>{2, 0, 1, 4, -1, 3}));
  EXPECT_EQ(ints_of(position.source_token), (std::vector<int32_t>{0, 1, 0, 2, 1}));
  const DispatchPlan by_choice = make_dispatch_plan(expert, probs, E, 2, DropPolicy::PositionByChoice);
  EXPECT_EQ(ints_of(by_choice.slot), (std::vector<int32_t>{2, -1, 0, 4, 1, 3}));
  EXPECT_EQ(ints_of(by_choice.source_token), (std::vector<int32_t>{1, 2, 0, 2, 1}));
  EXPECT_EQ(by_choice.kept, (std::vector<int64_t>{2, 2, 1}));
  // With k = 1 the two orders are the same.
  Tensor first = Tensor::from_ints({T, 1}, {0, 0, 0});
  EXPECT_EQ(ints_of(make_dispatch_plan(first, probs, E, 2, DropPolicy::PositionByChoice).slot),
            ints_of(make_dispatch_plan(first, probs, E, 2, DropPolicy::Position).slot));
}

TEST(MoELayerRouting, LayerPlanAndStatsMatchTheReference) {
  const int64_t T = 64;
  for (DropPolicy policy : kDropPolicies)
    for (double cf : {0.5, 1.0, 0.0}) {
      SCOPED_TRACE(detail::concat(to_string(policy), " cf=", cf));
      MoEConfig cfg = small_config(Activation::ReLU, true, cf);
      cfg.drop_policy = policy;
      const int64_t k = cfg.top_k, E = cfg.num_experts;
      Tensor x = normal_tensor({T, cfg.d_model}, 1.0f, kSeed, "routing.x");
      Tensor y = Tensor::zeros({T, cfg.d_model});
      MoELayer layer(cfg, kSeed);
      layer.forward(y, x, true);
      const int64_t C = expert_capacity(cf, T, k, E, cfg.min_capacity);
      // The router: probabilities and top-k recomputed in double.
      const std::vector<int32_t> ids = ints_of(layer.router_output().expert);
      for (int64_t t = 0; t < T; ++t) {
        const std::vector<double> p = ref_probs(cfg, layer.weights.w_gate, x.f32() + t * cfg.d_model);
        const std::vector<int32_t> top = ref_topk(p, k);
        for (int64_t j = 0; j < k; ++j) EXPECT_EQ(ids[t * k + j], top[j]) << "token " << t << " choice " << j;
        for (int64_t e = 0; e < E; ++e)  // float32 softmax of O(1) logits
          EXPECT_NEAR(layer.router_output().probs.f32()[t * E + e], p[e], 1e-6) << "token " << t;
      }
      const std::vector<bool> keep =
          ref_keep(ids, floats_of(layer.router_output().probs), T, k, E, C, policy);
      check_plan(layer.plan(), ids, keep, T, k, E, C);
      const MoEStats& s = layer.stats();
      EXPECT_EQ(s.tokens, T);
      EXPECT_EQ(s.capacity, C);
      EXPECT_EQ(s.routed, layer.plan().routed);
      EXPECT_EQ(s.kept, layer.plan().kept);
      std::vector<int64_t> routed(E, 0);
      for (int32_t id : ids) ++routed[id];
      EXPECT_EQ(s.routed, routed);
      int64_t dropped = 0;
      for (bool kept : keep) dropped += !kept;
      EXPECT_EQ(s.dropped_total, dropped);
      EXPECT_EQ(s.kept_total + s.dropped_total, T * k);
      // Aux losses from the double-precision router: f counts choices before dropping.
      double balance = 0.0, lse_sq = 0.0;
      for (int64_t e = 0; e < E; ++e) {
        double prob_sum = 0.0;
        for (int64_t t = 0; t < T; ++t)
          prob_sum += ref_probs(cfg, layer.weights.w_gate, x.f32() + t * cfg.d_model)[e];
        balance += static_cast<double>(routed[e]) / (T * k) * prob_sum / T;
      }
      for (int64_t t = 0; t < T; ++t) {
        const std::vector<double> l = ref_logits(cfg, layer.weights.w_gate, x.f32() + t * cfg.d_model);
        double sum = 0.0;
        for (double v : l) sum += std::exp(v);
        lse_sq += std::log(sum) * std::log(sum);
      }
      // Relative 1e-5: float32 logits and probabilities (~1e-7 relative) against double; counting
      // kept instead of routed choices, or a wrong mean, is off by O(10%) or more.
      const double aux = cfg.aux_loss_weight() * E * balance, z = cfg.z_loss_weight() * lse_sq / T;
      EXPECT_NEAR(s.aux_loss, aux, 1e-5 * aux);
      EXPECT_NEAR(s.z_loss, z, 1e-5 * z);
      if (cf == 0.5) {
        EXPECT_GT(dropped, 0) << "C = 16 against 32 choices per expert on average must drop";
      }
      if (cf <= 0) {
        EXPECT_EQ(dropped, 0);
      }
    }
}

TEST(MoELayerRouting, SigmoidScoresBiasScalingAndSequenceLossMatchTheReference) {
  // DeepSeek-V3's router, recomputed here in double with plain loops: s = sigmoid(x W_gate), the top k
  // of s + bias, weights = a * (renormalised) chosen s; the load-balancing loss over P of the
  // normalised scores s / sum_e s, per sequence (sequence scope) or over all tokens (local); the z-loss
  // lse(logits)^2 whatever the scoring.
  const int64_t T = 24, S = 6;
  for (AuxLossScope scope : {AuxLossScope::Local, AuxLossScope::Sequence})
    for (bool renormalize : {true, false}) {
      SCOPED_TRACE(detail::concat(to_string(scope), renormalize ? " renorm" : " no-renorm"));
      MoEConfig cfg = small_config(Activation::GELU, renormalize, 0.0);
      cfg.score_function = ScoreFunction::Sigmoid;
      cfg.routed_scaling_factor = 2.5f;
      cfg.aux_loss_scope = scope;
      cfg.seq_len = S;
      cfg.aux_loss_coeff = 0.3f;
      const int64_t k = cfg.top_k, E = cfg.num_experts, d = cfg.d_model;
      Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "sigmoid.x");
      MoELayer layer(cfg, kSeed);
      const std::vector<float> bias = {0.3f, -0.2f, 0.0f, 0.1f};
      for (int64_t e = 0; e < E; ++e) layer.selection_bias.f32()[e] = bias[e];
      Tensor y = Tensor::zeros({T, d});
      layer.forward(y, x, true);
      const RouterOutput& out = layer.router_output();
      const std::vector<int32_t> ids = ints_of(out.expert);
      std::vector<std::vector<double>> s(T, std::vector<double>(E));
      double z = 0.0;
      for (int64_t t = 0; t < T; ++t) {
        const std::vector<double> logit = ref_logits(cfg, layer.weights.w_gate, x.f32() + t * d);
        double lse = 0.0;
        for (int64_t e = 0; e < E; ++e) {
          s[t][e] = 1.0 / (1.0 + std::exp(-logit[e]));
          lse += std::exp(logit[e]);
          // float32 logits (d = 6 terms) and sigmoid: a few u of relative error.
          EXPECT_NEAR(out.probs.f32()[t * E + e], s[t][e], 1e-6) << "token " << t << " expert " << e;
        }
        z += std::log(lse) * std::log(lse);
        std::vector<double> biased(E);
        for (int64_t e = 0; e < E; ++e) biased[e] = s[t][e] + bias[e];
        const std::vector<int32_t> top = ref_topk(biased, k);
        double chosen_sum = 0.0;
        for (int64_t j = 0; j < k; ++j) chosen_sum += s[t][top[j]];
        for (int64_t j = 0; j < k; ++j) {
          ASSERT_EQ(ids[t * k + j], top[j]) << "token " << t << " choice " << j;
          const double want = 2.5 * (renormalize ? s[t][top[j]] / chosen_sum : s[t][top[j]]);
          EXPECT_NEAR(out.weight.f32()[t * k + j], want, 1e-6 * want) << "token " << t << " choice " << j;
        }
      }
      // The balance: coeff * E * mean over groups of sum_e f_ge P_ge, with groups the 4 sequences of 6
      // tokens (sequence) or all 24 tokens (local); P over the normalised scores.
      const int64_t rows = scope == AuxLossScope::Sequence ? S : T, groups = T / rows;
      double balance = 0.0;
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t e = 0; e < E; ++e) {
          double f = 0.0, P = 0.0;
          for (int64_t t = g * rows; t < (g + 1) * rows; ++t) {
            double row_sum = 0.0;
            for (int64_t c = 0; c < E; ++c) row_sum += s[t][c];
            P += s[t][e] / row_sum / rows;
            for (int64_t j = 0; j < k; ++j) f += ids[t * k + j] == e ? 1.0 / (rows * k) : 0.0;
          }
          balance += f * P / groups;
        }
      const double aux = 0.3 * E * balance, zl = cfg.z_loss_weight() * z / T;
      // Relative 1e-5 as in LayerPlanAndStatsMatchTheReference: float32 scores against double.
      EXPECT_NEAR(layer.stats().aux_loss, aux, 1e-5 * aux);
      EXPECT_NEAR(layer.stats().z_loss, zl, 1e-5 * zl);
    }
}

// Group-limited routing recomputed with plain loops in double: the selection scores s + bias, each
// group's score (its sorted selection scores: the first, or the sum of the first two), the top_groups
// groups by a stable sort (ties: the lower id), then the top k of the kept groups' experts.
std::vector<int32_t> ref_group_limited_topk(const std::vector<double>& selection, int64_t groups,
                                            int64_t top_groups, GroupScore score, int64_t k) {
  const int64_t E = static_cast<int64_t>(selection.size()), n = E / groups;
  std::vector<double> group_score(groups);
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<double> s(selection.begin() + g * n, selection.begin() + (g + 1) * n);
    std::sort(s.begin(), s.end(), std::greater<double>());
    group_score[g] = score == GroupScore::Top2Sum && n > 1 ? s[0] + s[1] : s[0];
  }
  const std::vector<int32_t> kept_groups = ref_topk(group_score, top_groups);
  std::vector<double> masked(E, -std::numeric_limits<double>::infinity());
  for (int32_t g : kept_groups)
    for (int64_t e = g * n; e < (g + 1) * n; ++e) masked[e] = selection[e];
  return ref_topk(masked, k);
}

// Group-limited layer configs: (E, groups, top_groups, k), scoring, group score, renormalize.
struct GroupCase {
  int64_t E, groups, top_groups, k;
  ScoreFunction score;
  GroupScore group_score;
  bool renormalize;
};
const std::vector<GroupCase> kGroupCases = {
    {8, 4, 2, 3, ScoreFunction::Softmax, GroupScore::Top2Sum, true},
    {8, 4, 1, 2, ScoreFunction::Sigmoid, GroupScore::Max, false},
    {8, 2, 1, 4, ScoreFunction::Sigmoid, GroupScore::Top2Sum, true},  // k = the whole group
    {12, 3, 2, 2, ScoreFunction::Softmax, GroupScore::Max, false},
    {6, 6, 3, 2, ScoreFunction::Sigmoid, GroupScore::Top2Sum, true},  // groups of one: the score itself
};

MoEConfig group_config(const GroupCase& c) {
  MoEConfig cfg = small_config(Activation::GELU, c.renormalize, 0.0);
  cfg.num_experts = c.E, cfg.top_k = c.k;
  cfg.routing_groups = c.groups, cfg.top_groups = c.top_groups, cfg.group_score = c.group_score;
  cfg.score_function = c.score;
  cfg.routed_scaling_factor = c.score == ScoreFunction::Sigmoid ? 2.5f : 1.0f;
  cfg.aux_loss_coeff = 0.3f;
  return cfg;
}

TEST(MoELayerRouting, GroupLimitedRoutingMatchesTheReference) {
  // The experts, the weights (the chosen scores, renormalised and scaled as without groups) and the
  // load-balancing and z-losses, whose definitions group-limited routing leaves as they are.
  const int64_t T = 40;
  for (const GroupCase& c : kGroupCases) {
    MoEConfig cfg = group_config(c);
    SCOPED_TRACE(detail::concat("E=", c.E, " groups=", c.groups, " top=", c.top_groups, " k=", c.k, " ",
                                to_string(c.score), " ", to_string(c.group_score)));
    const int64_t k = cfg.top_k, E = cfg.num_experts, d = cfg.d_model;
    Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "groups.x");
    MoELayer layer(cfg, kSeed);
    std::vector<double> bias(E);
    for (int64_t e = 0; e < E; ++e) layer.selection_bias.f32()[e] = static_cast<float>(bias[e] = 0.05 * (e % 3) - 0.05);
    Tensor y = Tensor::zeros({T, d});
    layer.forward(y, x, true);
    const RouterOutput& out = layer.router_output();
    const std::vector<int32_t> ids = ints_of(out.expert);
    double z = 0.0, balance = 0.0;
    std::vector<double> f(E, 0.0), P(E, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<double> logit = ref_logits(cfg, layer.weights.w_gate, x.f32() + t * d);
      std::vector<double> s(E), selection(E);
      double lse = 0.0, row_sum = 0.0;
      for (int64_t e = 0; e < E; ++e) lse += std::exp(logit[e]);
      for (int64_t e = 0; e < E; ++e) {
        s[e] = c.score == ScoreFunction::Sigmoid ? 1.0 / (1.0 + std::exp(-logit[e])) : std::exp(logit[e]) / lse;
        selection[e] = s[e] + bias[e];
        row_sum += s[e];
      }
      z += std::log(lse) * std::log(lse);
      const std::vector<int32_t> top = ref_group_limited_topk(selection, c.groups, c.top_groups, c.group_score, k);
      double chosen_sum = 0.0;
      for (int64_t j = 0; j < k; ++j) chosen_sum += s[top[j]];
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_EQ(ids[t * k + j], top[j]) << "token " << t << " choice " << j;
        const double want = cfg.routed_scaling_factor * (c.renormalize ? s[top[j]] / chosen_sum : s[top[j]]);
        // float32 logits (d = 6 terms), scores, a sum of k and a division: a few u of relative error.
        EXPECT_NEAR(out.weight.f32()[t * k + j], want, 1e-6 * want) << "token " << t << " choice " << j;
        f[top[j]] += 1.0 / (T * k);
      }
      for (int64_t e = 0; e < E; ++e) P[e] += s[e] / row_sum / T;  // sigmoid: normalised; softmax: sums to 1
    }
    for (int64_t e = 0; e < E; ++e) balance += f[e] * P[e];
    const double aux = 0.3 * E * balance, zl = cfg.z_loss_weight() * z / T;
    // Relative 1e-5 as in LayerPlanAndStatsMatchTheReference: float32 scores against double.
    EXPECT_NEAR(layer.stats().aux_loss, aux, 1e-5 * aux);
    EXPECT_NEAR(layer.stats().z_loss, zl, 1e-5 * zl);
  }
}

TEST(MoELayerRouting, EveryTokensExpertsLieInAtMostTopGroupsGroups) {
  // A property over many random layers and inputs (seeds), with large routing biases that pull tokens
  // towards different groups: each token's k experts span at most top_groups groups; and where
  // k > top_groups, some token would have spanned more without the limit (the property is not vacuous).
  for (const GroupCase& c : kGroupCases)
    for (uint64_t seed = 1; seed <= 8; ++seed) {
      MoEConfig cfg = group_config(c);
      SCOPED_TRACE(detail::concat("E=", c.E, " groups=", c.groups, " top=", c.top_groups, " seed ", seed));
      const int64_t T = 64, k = cfg.top_k, n = c.E / c.groups;
      Tensor x = normal_tensor({T, cfg.d_model}, 1.0f, seed, "property.x");
      auto spans = [&](const MoEConfig& layer_cfg) {
        MoELayer layer(layer_cfg, seed);
        fill_normal(layer.selection_bias, 0.3f, stream_id(seed, "property.bias"));
        Tensor y = Tensor::zeros({T, cfg.d_model});
        layer.forward(y, x, true);
        const std::vector<int32_t> ids = ints_of(layer.router_output().expert);
        int64_t widest = 0;
        for (int64_t t = 0; t < T; ++t) {
          std::vector<bool> visited(c.groups, false);
          for (int64_t j = 0; j < k; ++j) visited[ids[t * k + j] / n] = true;
          widest = std::max<int64_t>(widest, std::count(visited.begin(), visited.end(), true));
        }
        return widest;
      };
      EXPECT_LE(spans(cfg), c.top_groups);
      MoEConfig unlimited = cfg;
      unlimited.routing_groups = 0;
      if (seed == 1 && k > c.top_groups) {
        EXPECT_GT(spans(unlimited), c.top_groups) << "without the limit some token should span more groups";
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Forward against dense references.
// ---------------------------------------------------------------------------------------------

// Forward outputs are compared with atol = 1e-5 * max|y_ref| + 1e-6: float32 dot products of <= 16
// terms carry ~1e-6 relative error; a wrong weight, slot or activation is off by O(1e-1) relative.
double forward_tolerance(const std::vector<double>& ref) {
  double m = 0.0;
  for (double v : ref) m = std::max(m, std::abs(v));
  return 1e-5 * m + 1e-6;
}

TEST(MoELayerForward, TopkEqualToExpertsIsTheDenseSoftMixture) {
  const int64_t T = 10;
  for (Activation act : {Activation::ReLU, Activation::GELU, Activation::SwiGLU})
    for (bool renormalize : {true, false}) {
      SCOPED_TRACE(detail::concat(to_string(act), renormalize ? " renorm" : " no-renorm"));
      MoEConfig cfg = small_config(act, renormalize, 0.0);  // dropless
      cfg.top_k = cfg.num_experts;
      const int64_t d = cfg.d_model, E = cfg.num_experts;
      Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "soft.x");
      MoELayer layer(cfg, kSeed);
      Tensor y = Tensor::zeros({T, d});
      layer.forward(y, x, false);
      ASSERT_EQ(layer.stats().dropped_total, 0);
      std::vector<double> ref(T * d, 0.0);
      for (int64_t t = 0; t < T; ++t) {
        const float* xt = x.f32() + t * d;
        const std::vector<double> p = ref_probs(cfg, layer.weights.w_gate, xt);
        for (int64_t e = 0; e < E; ++e) {
          const std::vector<double> out = ref_expert(cfg, layer.weights, e, xt);
          for (int64_t c = 0; c < d; ++c) ref[t * d + c] += p[e] * out[c];
        }
      }
      const double tol = forward_tolerance(ref);
      for (int64_t i = 0; i < T * d; ++i)
        EXPECT_NEAR(y.f32()[i], ref[i], tol) << "y[" << i / d << ", " << i % d << "]";
    }
}

TEST(MoELayerForward, TopkWithDropsMatchesTheReference) {
  // y_t = sum over kept choices of w_tj FFN_e(x_t), with routing, capacity and kept set from the
  // references above; every policy, both weightings.
  const int64_t T = 24;
  for (DropPolicy policy : kDropPolicies)
    for (bool renormalize : {true, false}) {
      SCOPED_TRACE(detail::concat(to_string(policy), renormalize ? " renorm" : " no-renorm"));
      MoEConfig cfg = small_config(Activation::SwiGLU, renormalize, 0.75);
      cfg.drop_policy = policy;
      const int64_t d = cfg.d_model, k = cfg.top_k, E = cfg.num_experts;
      const int64_t C = expert_capacity(0.75, T, k, E, 0);  // 9
      Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "drops.x");
      MoELayer layer(cfg, kSeed);
      Tensor y = Tensor::zeros({T, d});
      layer.forward(y, x, true);
      std::vector<int32_t> ids(T * k);
      std::vector<float> probs(T * E);
      std::vector<double> weights(T * k);
      for (int64_t t = 0; t < T; ++t) {
        const std::vector<double> p = ref_probs(cfg, layer.weights.w_gate, x.f32() + t * d);
        const std::vector<int32_t> top = ref_topk(p, k);
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) sum += p[top[j]];
        for (int64_t j = 0; j < k; ++j) {
          ids[t * k + j] = top[j];
          weights[t * k + j] = renormalize ? p[top[j]] / sum : p[top[j]];
        }
        for (int64_t e = 0; e < E; ++e) probs[t * E + e] = static_cast<float>(p[e]);
      }
      const std::vector<bool> keep = ref_keep(ids, probs, T, k, E, C, policy);
      int64_t dropped = 0;
      std::vector<double> ref(T * d, 0.0);
      for (int64_t i = 0; i < T * k; ++i) {
        if (!keep[i]) {
          ++dropped;
          continue;
        }
        const std::vector<double> out = ref_expert(cfg, layer.weights, ids[i], x.f32() + (i / k) * d);
        for (int64_t c = 0; c < d; ++c) ref[(i / k) * d + c] += weights[i] * out[c];
      }
      ASSERT_GT(dropped, 0);
      EXPECT_EQ(layer.stats().dropped_total, dropped);
      const double tol = forward_tolerance(ref);
      for (int64_t i = 0; i < T * d; ++i)
        EXPECT_NEAR(y.f32()[i], ref[i], tol) << "y[" << i / d << ", " << i % d << "]";
    }
}

TEST(MoELayerForward, DroppedChoiceContributesNothing) {
  // x_t = e_t, so token t's logits are row t of W_gate, set by hand (E = 3, k = 2, C = 2):
  //   token 0: (1.5, 1, 0) -> experts 0, 1     token 1: (2, 0, 1) -> 0, 2     token 2: (2, 1, 0) -> 0, 1
  // Expert 0 is chosen three times. Position drops token 2's choice of expert 0 (the latest token);
  // Probs drops token 0's (lowest probability for expert 0).
  for (DropPolicy policy : {DropPolicy::Position, DropPolicy::Probs}) {
    SCOPED_TRACE(to_string(policy));
    MoEConfig cfg = moe_test_config(3, 3, 2, 4, Activation::GELU);
    cfg.capacity_factor = 1.0;  // C = ceil(1.0 * 2 * 3 / 3) = 2
    cfg.min_capacity = 0;
    cfg.drop_policy = policy;
    cfg.init_std = 0.5f;
    MoELayer layer(cfg, kSeed);
    const std::vector<float> logits = {1.5f, 1.f, 0.f, 2.f, 0.f, 1.f, 2.f, 1.f, 0.f};
    std::copy(logits.begin(), logits.end(), layer.weights.w_gate.f32());
    Tensor x = Tensor::from({3, 3}, {1, 0, 0, 0, 1, 0, 0, 0, 1});
    Tensor y = Tensor::zeros({3, 3});
    layer.forward(y, x, true);
    ASSERT_EQ(layer.stats().capacity, 2);
    const int64_t dropped_token = policy == DropPolicy::Position ? 2 : 0;
    // Segments: expert 0 rows 0-1 (its two kept tokens in token order), expert 1 rows 2-3, expert 2 row 4.
    const std::vector<int32_t> want_slot = policy == DropPolicy::Position
                                               ? std::vector<int32_t>{0, 2, 1, 4, -1, 3}
                                               : std::vector<int32_t>{-1, 2, 0, 4, 1, 3};
    EXPECT_EQ(ints_of(layer.plan().slot), want_slot);
    EXPECT_EQ(layer.stats().dropped_total, 1);

    const std::vector<std::vector<int32_t>> chosen = {{0, 1}, {0, 2}, {0, 1}};
    for (int64_t t = 0; t < 3; ++t) {
      const std::vector<double> p = ref_probs(cfg, layer.weights.w_gate, x.f32() + t * 3);
      const double sum = p[chosen[t][0]] + p[chosen[t][1]];
      std::vector<double> kept_only(3, 0.0), everything(3, 0.0);
      for (int j = 0; j < 2; ++j) {
        const std::vector<double> out = ref_expert(cfg, layer.weights, chosen[t][j], x.f32() + t * 3);
        for (int c = 0; c < 3; ++c) {
          const double contribution = p[chosen[t][j]] / sum * out[c];
          everything[c] += contribution;
          if (!(t == dropped_token && j == 0)) kept_only[c] += contribution;
        }
      }
      const double tol = forward_tolerance(kept_only);
      for (int c = 0; c < 3; ++c)
        EXPECT_NEAR(y.f32()[t * 3 + c], kept_only[c], tol) << "y[" << t << ", " << c << "]";
      if (t == dropped_token) {  // the check above could fail: the dropped contribution is not tiny
        double gap = 0.0;
        for (int c = 0; c < 3; ++c) gap = std::max(gap, std::abs(everything[c] - kept_only[c]));
        EXPECT_GT(gap, 100 * tol);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Expert-choice routing.
// ---------------------------------------------------------------------------------------------

// Expert e's C tokens the obvious way: all token ids stably sorted by score, highest first (so ties
// keep the lower token first), the first C kept. probs (T, E).
std::vector<int32_t> ref_expert_choice(const std::vector<float>& probs, int64_t T, int64_t E, int64_t e,
                                       int64_t C) {
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>(t);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return probs[a * E + e] > probs[b * E + e]; });
  ids.resize(C);
  return ids;
}

TEST(MoELayerExpertChoice, ForwardPlanAndStatsMatchThePlainLoopReference) {
  // y_t = sum over the experts e that chose t of p_te FFN_e(x_t), p = softmax(x W_gate) in double; the
  // choice recomputed from the layer's float32 scores (themselves checked against the double ones).
  // C = min(ceil(factor * k * T / E), T): 6 and 12 of T = 24 in training, the evaluation factor 2.0
  // gives 24 (every expert takes every token: the dense soft mixture), and a factor of 3 asks for
  // C = 36 > T, which means every token too.
  const int64_t T = 24;
  struct Case {
    double capacity_factor;
    bool training;
    int64_t C;
  };
  for (const Case& c : {Case{0.5, true, 6}, Case{1.0, true, 12}, Case{1.0, false, 24}, Case{3.0, true, 24}}) {
    SCOPED_TRACE(detail::concat("cf=", c.capacity_factor, c.training ? " training" : " eval"));
    MoEConfig cfg = small_config(Activation::SwiGLU, true, c.capacity_factor);
    cfg.eval_capacity_factor = 2.0;
    cfg.routing = Routing::ExpertChoice;  // aux_loss_coeff left at -1: expert choice's default, 0
    const int64_t d = cfg.d_model, E = cfg.num_experts;
    Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "expert_choice.x");
    MoELayer layer(cfg, kSeed);
    Tensor y = Tensor::zeros({T, d});
    layer.forward(y, x, c.training);
    const std::vector<float> probs = floats_of(layer.router_output().probs);
    std::vector<std::vector<double>> p(T);
    for (int64_t t = 0; t < T; ++t) {
      p[t] = ref_probs(cfg, layer.weights.w_gate, x.f32() + t * d);
      for (int64_t e = 0; e < E; ++e) ASSERT_NEAR(probs[t * E + e], p[t][e], 1e-6) << "token " << t;  // float32
    }
    std::vector<double> ref(T * d, 0.0);
    std::vector<int64_t> experts_of(T, 0);
    const DispatchPlan& plan = layer.plan();
    ASSERT_EQ(plan.top_k, E);
    ASSERT_EQ(plan.offset.size(), static_cast<size_t>(E + 1));
    const std::vector<int32_t> slot = ints_of(plan.slot), source = ints_of(plan.source_token);
    ASSERT_EQ(slot.size(), static_cast<size_t>(T * E));
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<int32_t> chosen = ref_expert_choice(probs, T, E, e, c.C);
      std::vector<bool> took(T, false);
      for (int32_t t : chosen) {
        took[t] = true;
        ++experts_of[t];
        const std::vector<double> out = ref_expert(cfg, layer.weights, e, x.f32() + t * d);
        for (int64_t col = 0; col < d; ++col) ref[t * d + col] += p[t][e] * out[col];
      }
      EXPECT_EQ(plan.kept[e], c.C) << "expert " << e;
      EXPECT_EQ(plan.offset[e + 1] - plan.offset[e], c.C) << "expert " << e;
      for (int64_t t = 0; t < T; ++t) {
        const int32_t row = slot[t * E + e];
        if (!took[t]) {
          EXPECT_EQ(row, -1) << "expert " << e << " did not choose token " << t;
          continue;
        }
        ASSERT_GE(row, plan.offset[e]) << "token " << t << " outside expert " << e << "'s segment";
        ASSERT_LT(row, plan.offset[e + 1]) << "token " << t << " outside expert " << e << "'s segment";
        EXPECT_EQ(source[row], t);
        if (row > plan.offset[e]) {
          EXPECT_LT(source[row - 1], t) << "segment of expert " << e << " not in token order";
        }
      }
    }
    const double tol = forward_tolerance(ref);
    for (int64_t i = 0; i < T * d; ++i) EXPECT_NEAR(y.f32()[i], ref[i], tol) << "y[" << i / d << ", " << i % d << "]";
    const MoEStats& s = layer.stats();
    EXPECT_EQ(s.capacity, c.C);
    EXPECT_EQ(s.routed, std::vector<int64_t>(E, c.C));
    EXPECT_EQ(s.kept, s.routed);
    EXPECT_EQ(s.kept_total, E * c.C);
    EXPECT_EQ(s.dropped_total, 0);
    EXPECT_EQ(s.aux_loss, 0.0);
    EXPECT_GT(s.z_loss, 0.0);
    if (c.C == 6) {  // one expert per token on average: a token gets zero, one or several experts
      EXPECT_GT(std::count(experts_of.begin(), experts_of.end(), 0), 0) << "no token went without an expert";
      EXPECT_GT(std::count_if(experts_of.begin(), experts_of.end(), [](int64_t n) { return n >= 2; }), 0)
          << "no token got two experts";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Jitter.
// ---------------------------------------------------------------------------------------------

TEST(MoELayerJitter, TrainingNoiseIsReproducibleAndEvalIgnoresIt) {
  const int64_t T = 10;
  MoEConfig cfg =
      small_config(Activation::GELU, true, 0.0);  // dropless: train and eval differ only by jitter
  cfg.top_k = cfg.num_experts;  // dense mixture: the reference below needs no routing decisions
  cfg.jitter_eps = 0.2f;
  const int64_t d = cfg.d_model, E = cfg.num_experts;
  Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "jitter.x");
  MoEConfig plain = cfg;
  plain.jitter_eps = 0.0f;

  MoELayer a(cfg, kSeed), b(cfg, kSeed), no_jitter(plain, kSeed);
  Tensor ya = Tensor::zeros({T, d}), yb = Tensor::zeros({T, d}), y_eval = Tensor::zeros({T, d}),
         y_plain = Tensor::zeros({T, d});
  a.forward(ya, x, true);
  b.forward(yb, x, true);
  EXPECT_EQ(floats_of(ya), floats_of(yb)) << "same seed, same call: same noise, same output";

  const Tensor jitter = a.router_output().jitter;  // a handle: stays valid after the next forward
  ASSERT_TRUE(jitter.defined());
  ASSERT_EQ(jitter.shape(), (Shape{T, d}));
  for (int64_t i = 0; i < T * d; ++i) {
    EXPECT_GE(jitter.f32()[i], 1.f - cfg.jitter_eps);
    EXPECT_LE(jitter.f32()[i], 1.f + cfg.jitter_eps);
    EXPECT_EQ(a.router_output().x_routed.f32()[i], x.f32()[i] * jitter.f32()[i]);
  }
  // Jitter touches the router input only; experts see the clean x.
  std::vector<double> ref(T * d, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = x.f32() + t * d;
    const std::vector<double> p = ref_probs(cfg, a.weights.w_gate, xt, jitter.f32() + t * d);
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<double> out = ref_expert(cfg, a.weights, e, xt);
      for (int64_t c = 0; c < d; ++c) ref[t * d + c] += p[e] * out[c];
    }
  }
  const double tol = forward_tolerance(ref);
  for (int64_t i = 0; i < T * d; ++i) EXPECT_NEAR(ya.f32()[i], ref[i], tol) << "y[" << i << "]";

  a.forward(y_eval, x, false);
  EXPECT_FALSE(a.router_output().jitter.defined()) << "eval mode must not draw noise";
  no_jitter.forward(y_plain, x, false);
  EXPECT_EQ(floats_of(y_eval), floats_of(y_plain)) << "eval mode ignores jitter_eps";
  double diff = 0.0;
  for (int64_t i = 0; i < T * d; ++i)
    diff = std::max(diff, std::abs(static_cast<double>(ya.f32()[i]) - y_eval.f32()[i]));
  EXPECT_GT(diff, 100 * tol) << "training with jitter should change the output";

  // The next training call draws fresh noise.
  ASSERT_EQ(floats_of(b.router_output().jitter), floats_of(jitter));
  b.forward(yb, x, true);
  ASSERT_TRUE(b.router_output().jitter.defined());
  EXPECT_NE(floats_of(b.router_output().jitter), floats_of(jitter));
}

// ---------------------------------------------------------------------------------------------
// Bad input.
// ---------------------------------------------------------------------------------------------

TEST(MoEConfigWarnings, TopOneWithRenormalizeWarnsThatTheRouterGetsNoTaskGradient) {
  MoEConfig cfg = small_config(Activation::GELU, true, 1.25);
  cfg.top_k = 1;
  const std::vector<std::string> warnings = cfg.warnings();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_CONTAINS(warnings[0], "moe.top_k = 1 with moe.renormalize = true", "no gradient",
                  "set moe.renormalize = false", "w = p");
  EXPECT_EQ(warnings[0].find('\n'), std::string::npos);
  cfg.renormalize = false;  // Switch's w = p: the router learns from the task loss
  EXPECT_TRUE(cfg.warnings().empty());
  cfg.renormalize = true;
  cfg.top_k = 2;  // p_j / (p_1 + p_2) depends on the router
  EXPECT_TRUE(cfg.warnings().empty());
}

TEST(MoELayerErrors, BadConfigNamesTheParameterAndItsRange) {
  const MoEConfig good = small_config(Activation::GELU, true, 1.25);
  EXPECT_NO_THROW(good.validate());
  MoEConfig expert_choice = good;  // the defaults fit expert choice: its aux-loss default is 0
  expert_choice.routing = Routing::ExpertChoice;
  EXPECT_NO_THROW(expert_choice.validate());
  EXPECT_EQ(expert_choice.aux_loss_weight(), 0.0f);
  struct Case {
    std::function<void(MoEConfig&)> edit;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {[](MoEConfig& c) { c.num_experts = 0; }, {"num_experts = 0", ">= 1"}},
      {[](MoEConfig& c) { c.top_k = 0; }, {"top_k = 0", ">= 1"}},
      {[](MoEConfig& c) { c.top_k = 5; }, {"top_k = 5", "<= num_experts = 4"}},
      {[](MoEConfig& c) { c.min_capacity = -1; }, {"min_capacity = -1", ">= 0"}},
      {[](MoEConfig& c) { c.d_model = 0; }, {"d_model = 0", ">= 1"}},
      {[](MoEConfig& c) { c.expert_hidden = 0; }, {"expert_hidden = 0", ">= 1"}},
      {[](MoEConfig& c) { c.jitter_eps = 1.0f; }, {"jitter_eps", "[0, 1)"}},
      {[](MoEConfig& c) { c.capacity_factor = std::nan(""); }, {"capacity_factor = nan", "any finite value"}},
      {[](MoEConfig& c) { c.routed_scaling_factor = 0.f; }, {"routed_scaling_factor = 0", "> 0"}},
      {[](MoEConfig& c) { c.aux_loss_scope = AuxLossScope::Sequence; },
       {"aux_loss_scope = sequence needs the model's seq_len (>= 1)", "seq_len = 0"}},
      // Settings that do not apply to expert choice, each refused naming both keys.
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.capacity_factor = 0.0; },
       {"routing = expert_choice needs capacity_factor > 0", "capacity_factor = 0"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.eval_capacity_factor = -1.0; },
       {"routing = expert_choice needs", "eval_capacity_factor = -1"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.score_function = ScoreFunction::Sigmoid; },
       {"routing = expert_choice scores with softmax", "score_function = sigmoid"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.drop_policy = DropPolicy::Probs; },
       {"routing = expert_choice does not use drop_policy", "drop_policy = probs"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.routed_scaling_factor = 2.5f; },
       {"routing = expert_choice", "routed_scaling_factor = 2.5"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.balancing = Balancing::AuxFree; },
       {"routing = expert_choice is balanced by construction", "balancing = aux_free"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.aux_loss_coeff = 0.01f; },
       {"routing = expert_choice has no load-balancing loss", "aux_loss_coeff = 0.01"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.aux_loss_scope = AuxLossScope::Global; },
       {"routing = expert_choice has no load-balancing loss", "aux_loss_scope = global"}},
      {[](MoEConfig& c) { c.routing = Routing::ExpertChoice, c.routing_groups = 2; },
       {"routing = expert_choice has no token choice for routing groups to limit", "routing_groups = 2"}},
  };
  for (const Case& c : cases) {
    MoEConfig cfg = good;
    c.edit(cfg);
    for (int through_layer = 0; through_layer < 2; ++through_layer) {
      SCOPED_TRACE(c.needles[0] + (through_layer ? " through MoELayer" : " through validate()"));
      const std::string message = error_message([&] {
        if (through_layer) {
          MoELayer layer(cfg, kSeed);
        } else {
          cfg.validate();
        }
      });
      EXPECT_TRUE(contains_all(message, c.needles));
    }
  }
}

TEST(MoELayerErrors, BadInputNamesTheProblem) {
  const MoEConfig cfg = small_config(Activation::GELU, true, 1.25);
  const int64_t T = 5, d = cfg.d_model;
  MoELayer layer(cfg, kSeed);
  Tensor y = Tensor::zeros({T, d}), dx = Tensor::zeros({T, d});
  EXPECT_CONTAINS(error_message([&] { layer.backward(dx, y); }), "before forward");
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "bad.x");
    x.f32()[3 * d + 2] = bad;
    EXPECT_CONTAINS(error_message([&] { layer.forward(y, x, true); }), "non-finite", "token 3", "column 2");
  }
  Tensor wide = Tensor::zeros({T, d + 1}), y_wide = Tensor::zeros({T, d + 1});
  EXPECT_CONTAINS(error_message([&] { layer.forward(y_wide, wide, true); }), "x has shape (5, 7)", "d_model = 6");
  Tensor flat = Tensor::zeros({T * d});
  EXPECT_CONTAINS(error_message([&] { layer.forward(y, flat, true); }), "x", "rank 2");
  Tensor x = normal_tensor({T, d}, 1.0f, kSeed, "bad.x");
  Tensor y_short = Tensor::zeros({T - 1, d});
  EXPECT_CONTAINS(error_message([&] { layer.forward(y_short, x, true); }), "y has shape (4, 6)", "expected (5, 6)");
  layer.forward(y, x, true);
  Tensor dy_short = Tensor::zeros({T - 1, d});
  EXPECT_CONTAINS(error_message([&] { layer.backward(dx, dy_short); }), "dy has shape (4, 6)", "expected (5, 6)");

  MoEConfig per_sequence = cfg;
  per_sequence.aux_loss_scope = AuxLossScope::Sequence;
  per_sequence.seq_len = 2;
  MoELayer sequence_layer(per_sequence, kSeed);
  EXPECT_CONTAINS(error_message([&] { sequence_layer.forward(y, x, true); }),
                  "aux_loss_scope = sequence needs whole sequences", "5 tokens", "seq_len = 2");
}

}  // namespace
}  // namespace moe
