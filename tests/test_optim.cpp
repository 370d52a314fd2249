// Tests of the optimizers (AdamW, SGD), their state for checkpoints, the LR schedule, and gradient norm
// and clipping on one process, each against a double-precision reference written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/parameters.h"
#include "core/random.h"
#include "core/tensor.h"
#include "optim/adamw.h"
#include "optim/grad_norm.h"
#include "optim/lr_schedule.h"
#include "optim/sgd.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

constexpr uint64_t kSeed = 777;

// Every optimizer step rounds each weight (|w| <= ~2) to float32 (half an ulp: 1.2e-7) after a few
// float operations of similar size; over the 4 steps below the drift from the double reference stays
// under 1e-6, while every bug tested for (no bias correction, no or wrong decay, momentum misapplied)
// moves a weight by at least 1e-4 (lr * wd * |w| with lr = 1e-2, wd = 0.1, |w| >= 0.1).
constexpr double kWeightTol = 2e-6;

// ---------------------------------------------------------------------------------------------
// A small registry with fixed values and gradients.
// ---------------------------------------------------------------------------------------------

// Values in +-[0.1, 2) and gradients in +-[0.05, 1.05): far from zero, so eps and sign flips don't
// make the comparison fragile. Both are functions of (name, step, index).
float value_at(const std::string& name, int64_t i) {
  const float u = uniform01(stream_id(kSeed, "value." + name), static_cast<uint64_t>(i));
  const float magnitude = 0.1f + 1.9f * u;
  return (i % 3 == 1) ? -magnitude : magnitude;
}
float grad_at(const std::string& name, int step, int64_t i) {
  const float u = uniform01(stream_id(kSeed, "grad." + name + "." + std::to_string(step)), static_cast<uint64_t>(i));
  const float magnitude = 0.05f + u;
  return (u > 0.5f) ? -magnitude : magnitude;
}

struct ParamSpec {
  std::string name;
  Shape shape;
  ParamKind kind;
  bool weight_decay;
};

// "w" decays, "norm.g" does not (a gain), "experts.w" is an expert shard that decays.
const std::vector<ParamSpec>& specs() {
  static const std::vector<ParamSpec> s = {
      {"w", {3, 4}, ParamKind::Dense, true},
      {"norm.g", {5}, ParamKind::Dense, false},
      {"experts.w", {2, 3, 2}, ParamKind::Expert, true},
  };
  return s;
}

void fill_values(ParameterRegistry& registry) {
  for (Parameter& p : registry.all())
    for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] = value_at(p.name, i);
}

void fill_grads(ParameterRegistry& registry, int step) {
  for (Parameter& p : registry.all())
    for (int64_t i = 0; i < p.grad.numel(); ++i) p.grad.f32()[i] = grad_at(p.name, step, i);
}

ParameterRegistry make_registry() {
  ParameterRegistry registry;
  std::vector<Tensor> grads;  // stand in for the layers' gradient tensors until flatten_gradients
  grads.reserve(specs().size());
  for (const ParamSpec& s : specs()) {
    grads.push_back(Tensor::zeros(s.shape));
    registry.add(s.name, Tensor::zeros(s.shape), grads.back(), s.kind, s.weight_decay);
  }
  registry.flatten_gradients();
  fill_values(registry);
  return registry;
}

// The double-precision mirror of a registry: values (and optimizer state) per parameter.
struct Reference {
  std::vector<std::vector<double>> w, m, v;
  std::vector<bool> decays;

  explicit Reference(const ParameterRegistry& registry) {
    for (const Parameter& p : registry.all()) {
      w.emplace_back(p.value.f32(), p.value.f32() + p.value.numel());
      m.emplace_back(p.value.numel(), 0.0);
      v.emplace_back(p.value.numel(), 0.0);
      decays.push_back(p.weight_decay);
    }
  }
};

// AdamW step `t` (1-based) in double, straight from the paper (decoupled decay, bias-corrected moments).
void reference_adamw_step(Reference& ref, const ParameterRegistry& registry, const AdamWConfig& cfg, double lr,
                          int64_t t) {
  const double b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
  const double c1 = 1.0 - std::pow(b1, static_cast<double>(t));
  const double c2 = 1.0 - std::pow(b2, static_cast<double>(t));
  for (size_t p = 0; p < ref.w.size(); ++p) {
    const float* g = registry.all()[p].grad.f32();
    const double wd = ref.decays[p] ? static_cast<double>(cfg.weight_decay) : 0.0;
    for (size_t i = 0; i < ref.w[p].size(); ++i) {
      ref.m[p][i] = b1 * ref.m[p][i] + (1.0 - b1) * g[i];
      ref.v[p][i] = b2 * ref.v[p][i] + (1.0 - b2) * g[i] * g[i];
      const double m_hat = ref.m[p][i] / c1, v_hat = ref.v[p][i] / c2;
      ref.w[p][i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + wd * ref.w[p][i]);
    }
  }
}

// SGD with momentum in double: buf = mu * buf + g; w -= lr * (buf + wd * w). ref.m holds the buffers.
void reference_sgd_step(Reference& ref, const ParameterRegistry& registry, const SgdConfig& cfg, double lr) {
  for (size_t p = 0; p < ref.w.size(); ++p) {
    const float* g = registry.all()[p].grad.f32();
    const double wd = ref.decays[p] ? static_cast<double>(cfg.weight_decay) : 0.0;
    for (size_t i = 0; i < ref.w[p].size(); ++i) {
      ref.m[p][i] = static_cast<double>(cfg.momentum) * ref.m[p][i] + g[i];
      ref.w[p][i] -= lr * (ref.m[p][i] + wd * ref.w[p][i]);
    }
  }
}

// Passes when every weight of the registry is within kWeightTol of the reference; names the worst.
::testing::AssertionResult matches(const ParameterRegistry& registry, const Reference& ref) {
  double worst = 0.0;
  std::string where;
  for (size_t p = 0; p < ref.w.size(); ++p) {
    const Parameter& param = registry.all()[p];
    for (size_t i = 0; i < ref.w[p].size(); ++i) {
      const double diff = std::fabs(static_cast<double>(param.value.f32()[i]) - ref.w[p][i]);
      if (!(diff <= worst)) {
        worst = diff;
        where = param.name + "[" + std::to_string(i) + "] = " + std::to_string(param.value.f32()[i]) +
                ", reference " + std::to_string(ref.w[p][i]);
      }
    }
  }
  if (worst <= kWeightTol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "worst weight " << where << " (|diff| " << worst << ")";
}

// ---------------------------------------------------------------------------------------------
// AdamW
// ---------------------------------------------------------------------------------------------

TEST(AdamW, MatchesReferenceWithAndWithoutDecay) {
  for (float wd : {0.0f, 0.1f}) {
    SCOPED_TRACE("weight_decay=" + std::to_string(wd));
    ParameterRegistry registry = make_registry();
    AdamWConfig cfg;
    cfg.weight_decay = wd;
    AdamW opt(registry, cfg);
    Reference ref(registry);
    const double lrs[] = {1e-2, 5e-3, 1e-2, 2e-2};  // a schedule's changing lr is honoured per step
    for (int t = 1; t <= 4; ++t) {
      fill_grads(registry, t);
      opt.step(static_cast<float>(lrs[t - 1]));
      reference_adamw_step(ref, registry, cfg, static_cast<float>(lrs[t - 1]), t);
      EXPECT_EQ(opt.steps_taken(), t);
      EXPECT_TRUE(matches(registry, ref)) << "after step " << t;
    }
  }
}

TEST(AdamW, ParameterWithoutWeightDecayDoesNotDecay) {
  // Two parameters with equal values and gradients, one registered with weight_decay = false: with a
  // large decay the decaying one must move by exactly the extra lr * wd * w, the other not at all.
  ParameterRegistry registry;
  const Tensor a = Tensor::from({4}, {1.0f, -0.5f, 2.0f, 0.25f});
  const Tensor b = a.clone();
  Tensor ga = Tensor::from({4}, {0.3f, -0.2f, 0.1f, 0.7f});
  Tensor gb = ga.clone();
  registry.add("decays", a, ga, ParamKind::Dense, true);
  registry.add("gain", b, gb, ParamKind::Dense, false);
  AdamWConfig cfg;
  cfg.weight_decay = 0.5f;
  AdamW opt(registry, cfg);
  const float lr = 0.1f;
  const Tensor before = a.clone();
  opt.step(lr);
  for (int64_t i = 0; i < 4; ++i) {
    const double w0 = before.f32()[i], g = ga.f32()[i];
    // Step 1: m_hat = g, v_hat = g^2, so the Adam part is g / (|g| + eps).
    const double adam = lr * g / (std::fabs(g) + cfg.eps);
    // Tolerance: a few float32 roundings of values of size 2.
    EXPECT_NEAR(b.f32()[i], w0 - adam, 1e-6) << "the weight_decay = false parameter decayed, element " << i;
    EXPECT_NEAR(a.f32()[i], w0 - adam - lr * cfg.weight_decay * w0, 1e-6) << "element " << i;
  }
}

TEST(AdamW, BiasCorrectionAtSteps1And2) {
  // Closed forms with wd = 0: step 1 moves w by -lr * g1 / (|g1| + eps) (m_hat = g1, v_hat = g1^2);
  // step 2 by -lr * m_hat / (sqrt(v_hat) + eps) with m_hat = (b1 g1 + g2) / (1 + b1) and
  // v_hat = (b2 g1^2 + g2^2) / (1 + b2). Without bias correction step 1 would move by only
  // (1 - b1) / sqrt(1 - b2) ~ 0.45 of lr.
  ParameterRegistry registry;
  Tensor w = Tensor::from({3}, {0.5f, -1.0f, 1.5f});
  Tensor g = Tensor::zeros({3});
  registry.add("w", w, g, ParamKind::Dense, false);
  AdamWConfig cfg;
  AdamW opt(registry, cfg);
  const double b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
  const float lr = 0.01f;
  const std::vector<float> g1 = {0.2f, -0.04f, 1.0f}, g2 = {-0.6f, -0.04f, 0.5f};

  std::vector<double> w0(w.f32(), w.f32() + 3);
  for (int i = 0; i < 3; ++i) g.f32()[i] = g1[i];
  opt.step(lr);
  std::vector<double> w1(w.f32(), w.f32() + 3);
  for (int i = 0; i < 3; ++i) {
    const double expected = w0[i] - lr * g1[i] / (std::fabs(g1[i]) + eps);
    EXPECT_NEAR(w1[i], expected, 1e-6) << "step 1, element " << i;  // float32 rounding of values ~1
    EXPECT_NEAR(std::fabs(w1[i] - w0[i]), lr, 1e-6) << "step 1 moves every weight by lr";
  }
  for (int i = 0; i < 3; ++i) g.f32()[i] = g2[i];
  opt.step(lr);
  for (int i = 0; i < 3; ++i) {
    const double m_hat = (b1 * g1[i] + g2[i]) / (1.0 + b1);
    const double v_hat = (b2 * g1[i] * g1[i] + static_cast<double>(g2[i]) * g2[i]) / (1.0 + b2);
    const double expected = w1[i] - lr * m_hat / (std::sqrt(v_hat) + eps);
    EXPECT_NEAR(w.f32()[i], expected, 1e-6) << "step 2, element " << i;  // float32 rounding of values ~1
  }
}

TEST(AdamW, StateNamesAndSharedStorage) {
  ParameterRegistry registry = make_registry();
  AdamW opt(registry, AdamWConfig{});
  std::vector<std::pair<std::string, Tensor>> state = opt.state();
  ASSERT_EQ(state.size(), 2 * registry.all().size());
  for (size_t p = 0; p < registry.all().size(); ++p) {
    const Parameter& param = registry.all()[p];
    EXPECT_EQ(state[2 * p].first, "adamw.m." + param.name);
    EXPECT_EQ(state[2 * p + 1].first, "adamw.v." + param.name);
    EXPECT_EQ(state[2 * p].second.shape(), param.value.shape());
    EXPECT_EQ(state[2 * p + 1].second.shape(), param.value.shape());
  }
  // A step fills the moments, visible through tensors fetched before it: they share storage.
  fill_grads(registry, 1);
  opt.step(0.01f);
  const float g0 = registry.all()[0].grad.f32()[0];
  EXPECT_FLOAT_EQ(state[0].second.f32()[0], (1.0f - 0.9f) * g0);
  EXPECT_FLOAT_EQ(state[1].second.f32()[0], (1.0f - 0.95f) * g0 * g0);
}

void copy_into(Tensor& dst, const Tensor& src) {
  for (int64_t i = 0; i < src.numel(); ++i) dst.f32()[i] = src.f32()[i];
}

// A fresh optimizer on a copy of `from`'s weights, with `from_opt`'s moments written into its state()
// tensors (as a checkpoint restore does).
struct Restored {
  std::unique_ptr<ParameterRegistry> registry;
  std::unique_ptr<AdamW> opt;
};
Restored restore(const ParameterRegistry& from, AdamW& from_opt, const AdamWConfig& cfg) {
  Restored r{std::make_unique<ParameterRegistry>(make_registry()), nullptr};
  for (size_t p = 0; p < from.all().size(); ++p) copy_into(r.registry->all()[p].value, from.all()[p].value);
  r.opt = std::make_unique<AdamW>(*r.registry, cfg);
  std::vector<std::pair<std::string, Tensor>> src = from_opt.state(), dst = r.opt->state();
  EXPECT_EQ(src.size(), dst.size());
  for (size_t s = 0; s < std::min(src.size(), dst.size()); ++s) {
    EXPECT_EQ(src[s].first, dst[s].first);
    copy_into(dst[s].second, src[s].second);
  }
  return r;
}

TEST(AdamW, RestoringStateAndStepCountContinuesTheRun) {
  // Optimizer A takes 3 steps. B starts from A's weights and moments after 2 steps with
  // set_steps_taken(2) and takes step 3: it must land exactly where A does. C is B without
  // set_steps_taken: its step 3 uses step 1's bias correction and must land elsewhere, so the
  // comparison does test that the step count and the written moments are used.
  AdamWConfig cfg;
  ParameterRegistry reg_a = make_registry();
  AdamW a(reg_a, cfg);
  for (int t = 1; t <= 2; ++t) {
    fill_grads(reg_a, t);
    a.step(0.01f);
  }
  Restored b = restore(reg_a, a, cfg);
  Restored c = restore(reg_a, a, cfg);
  b.opt->set_steps_taken(2);
  EXPECT_EQ(b.opt->steps_taken(), 2);
  EXPECT_EQ(c.opt->steps_taken(), 0);

  for (ParameterRegistry* reg : {&reg_a, b.registry.get(), c.registry.get()}) fill_grads(*reg, 3);
  a.step(0.01f);
  b.opt->step(0.01f);
  c.opt->step(0.01f);
  EXPECT_EQ(b.opt->steps_taken(), 3);
  double c_diff = 0.0;
  for (size_t p = 0; p < reg_a.all().size(); ++p) {
    const Tensor& wa = reg_a.all()[p].value;
    for (int64_t i = 0; i < wa.numel(); ++i) {
      EXPECT_EQ(b.registry->all()[p].value.f32()[i], wa.f32()[i])
          << "same state, same arithmetic: bitwise equal; " << reg_a.all()[p].name << "[" << i << "]";
      c_diff = std::max(c_diff, std::fabs(static_cast<double>(c.registry->all()[p].value.f32()[i]) - wa.f32()[i]));
    }
  }
  EXPECT_GT(c_diff, 1e-4) << "the step count had no visible effect on the bias correction";

  // Moments written through state() are used: zeroing them turns step 4 into a first-step-like update
  // with m = (1 - b1) g, which differs from A's.
  for (auto& [name, t] : b.opt->state()) t.zero();
  for (ParameterRegistry* reg : {&reg_a, b.registry.get()}) fill_grads(*reg, 4);
  a.step(0.01f);
  b.opt->step(0.01f);
  double b_diff = 0.0;
  for (size_t p = 0; p < reg_a.all().size(); ++p)
    for (int64_t i = 0; i < reg_a.all()[p].value.numel(); ++i)
      b_diff = std::max(b_diff, std::fabs(static_cast<double>(b.registry->all()[p].value.f32()[i]) -
                                          reg_a.all()[p].value.f32()[i]));
  EXPECT_GT(b_diff, 1e-4) << "zeroing the moments through state() changed nothing";
}

TEST(AdamW, RejectsBadConfig) {
  ParameterRegistry registry = make_registry();
  AdamWConfig bad;
  bad.beta1 = 1.0f;
  EXPECT_CONTAINS(error_message([&] { AdamW opt(registry, bad); }), "beta1");
  bad = AdamWConfig{};
  bad.beta2 = -0.1f;
  EXPECT_CONTAINS(error_message([&] { AdamW opt(registry, bad); }), "beta2");
  bad = AdamWConfig{};
  bad.eps = 0.0f;
  EXPECT_CONTAINS(error_message([&] { AdamW opt(registry, bad); }), "eps");
  bad = AdamWConfig{};
  bad.weight_decay = -1.0f;
  EXPECT_CONTAINS(error_message([&] { AdamW opt(registry, bad); }), "weight_decay");
}

// ---------------------------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------------------------

TEST(Sgd, MatchesReference) {
  for (float momentum : {0.0f, 0.9f})
    for (float wd : {0.0f, 0.1f}) {
      SCOPED_TRACE("momentum=" + std::to_string(momentum) + " weight_decay=" + std::to_string(wd));
      ParameterRegistry registry = make_registry();
      SgdConfig cfg;
      cfg.momentum = momentum;
      cfg.weight_decay = wd;
      Sgd opt(registry, cfg);
      Reference ref(registry);
      for (int t = 1; t <= 4; ++t) {
        fill_grads(registry, t);
        const float lr = 0.01f * static_cast<float>(t);
        opt.step(lr);
        reference_sgd_step(ref, registry, cfg, lr);
        EXPECT_EQ(opt.steps_taken(), t);
        EXPECT_TRUE(matches(registry, ref)) << "after step " << t;
      }
    }
}

TEST(Sgd, FirstStepAndNoDecayParameter) {
  // Step 1 from a zero buffer: w -= lr * (g + wd * w), with wd only on weight_decay = true parameters.
  ParameterRegistry registry;
  const Tensor a = Tensor::from({2}, {1.0f, -2.0f}), b = a.clone();
  Tensor ga = Tensor::from({2}, {0.5f, 0.25f}), gb = ga.clone();
  registry.add("decays", a, ga, ParamKind::Dense, true);
  registry.add("bias", b, gb, ParamKind::Dense, false);
  SgdConfig cfg;
  cfg.momentum = 0.9f;
  cfg.weight_decay = 0.5f;
  Sgd opt(registry, cfg);
  opt.step(0.1f);
  // Tolerance: one or two float32 roundings of values ~2.
  EXPECT_NEAR(a.f32()[0], 1.0 - 0.1 * (0.5 + 0.5 * 1.0), 1e-6);
  EXPECT_NEAR(a.f32()[1], -2.0 - 0.1 * (0.25 + 0.5 * -2.0), 1e-6);
  EXPECT_NEAR(b.f32()[0], 1.0 - 0.1 * 0.5, 1e-6);
  EXPECT_NEAR(b.f32()[1], -2.0 - 0.1 * 0.25, 1e-6);
  // Step 2 with the same gradient: buf = 0.9 * g + g.
  opt.step(0.1f);
  EXPECT_NEAR(b.f32()[0], 1.0 - 0.1 * 0.5 - 0.1 * 1.9 * 0.5, 1e-6);
}

TEST(Sgd, StateNamesAndSharedStorage) {
  ParameterRegistry registry = make_registry();
  SgdConfig cfg;
  cfg.momentum = 0.5f;
  Sgd opt(registry, cfg);
  std::vector<std::pair<std::string, Tensor>> state = opt.state();
  ASSERT_EQ(state.size(), registry.all().size());
  for (size_t p = 0; p < registry.all().size(); ++p) {
    EXPECT_EQ(state[p].first, "sgd.momentum." + registry.all()[p].name);
    EXPECT_EQ(state[p].second.shape(), registry.all()[p].value.shape());
  }
  // Writing a buffer changes the next update: w -= lr * (0.5 * buf + g).
  state[0].second.f32()[0] = 2.0f;
  for (Parameter& p : registry.all()) p.grad.zero();
  const float w0 = registry.all()[0].value.f32()[0];
  opt.step(0.1f);
  EXPECT_FLOAT_EQ(registry.all()[0].value.f32()[0], w0 - 0.1f * 1.0f);
  EXPECT_FLOAT_EQ(state[0].second.f32()[0], 1.0f);
}

TEST(Sgd, RejectsBadConfig) {
  ParameterRegistry registry = make_registry();
  SgdConfig bad;
  bad.momentum = 1.0f;
  EXPECT_CONTAINS(error_message([&] { Sgd opt(registry, bad); }), "momentum");
  bad = SgdConfig{};
  bad.weight_decay = -0.5f;
  EXPECT_CONTAINS(error_message([&] { Sgd opt(registry, bad); }), "weight_decay");
}

// ---------------------------------------------------------------------------------------------
// LR schedule
// ---------------------------------------------------------------------------------------------

// The schedule and these expectations are the same few double operations: a few ulps of lr apart.
constexpr double kLrTol = 1e-15;
constexpr double kLr = 1e-3, kMinLr = 1e-4;

LrSchedule schedule(LrDecay decay, int64_t warmup, int64_t total) {
  return {.lr = kLr, .min_lr = kMinLr, .warmup_steps = warmup, .total_steps = total, .decay = decay};
}

TEST(LrSchedule, WarmUpIsLinearToThePeak) {
  for (LrDecay decay : {LrDecay::Cosine, LrDecay::Linear, LrDecay::Constant}) {
    const LrSchedule s = schedule(decay, 10, 111);
    EXPECT_NEAR(s.at(0), kLr / 10, kLrTol);
    for (int64_t k = 0; k < 10; ++k) EXPECT_NEAR(s.at(k), kLr * static_cast<double>(k + 1) / 10.0, kLrTol) << k;
    EXPECT_NEAR(s.at(9), kLr, kLrTol) << "peak at the last warm-up step";
    EXPECT_NEAR(s.at(10), kLr, kLrTol) << "decay starts from the peak";
  }
}

TEST(LrSchedule, CosineDecay) {
  // Warm-up 10, total 111: the decay spans steps 10..110 (progress = (step - 10) / 100).
  const LrSchedule s = schedule(LrDecay::Cosine, 10, 111);
  EXPECT_NEAR(s.at(60), (kLr + kMinLr) / 2, kLrTol) << "midpoint";
  EXPECT_NEAR(s.at(35), kMinLr + (kLr - kMinLr) * 0.5 * (1 + std::sqrt(0.5)), kLrTol) << "quarter";
  EXPECT_NEAR(s.at(110), kMinLr, kLrTol) << "end value at total_steps - 1";
  EXPECT_NEAR(s.at(111), kMinLr, kLrTol);
  EXPECT_NEAR(s.at(1000), kMinLr, kLrTol) << "min_lr after the end";
  for (int64_t k = 10; k < 110; ++k) EXPECT_GT(s.at(k), s.at(k + 1)) << "strictly decreasing at " << k;
}

TEST(LrSchedule, LinearDecay) {
  const LrSchedule s = schedule(LrDecay::Linear, 10, 111);
  EXPECT_NEAR(s.at(60), (kLr + kMinLr) / 2, kLrTol);
  EXPECT_NEAR(s.at(35), kMinLr + (kLr - kMinLr) * 0.75, kLrTol);
  EXPECT_NEAR(s.at(85), kMinLr + (kLr - kMinLr) * 0.25, kLrTol);
  EXPECT_NEAR(s.at(110), kMinLr, kLrTol);
  EXPECT_NEAR(s.at(500), kMinLr, kLrTol);
}

TEST(LrSchedule, ConstantAfterWarmUp) {
  const LrSchedule s = schedule(LrDecay::Constant, 10, 111);
  for (int64_t k : {10, 60, 110, 500}) EXPECT_EQ(s.at(k), kLr) << k;
}

TEST(LrSchedule, NoWarmUp) {
  const LrSchedule s = schedule(LrDecay::Cosine, 0, 101);
  EXPECT_NEAR(s.at(0), kLr, kLrTol) << "step 0 is the peak";
  EXPECT_NEAR(s.at(50), (kLr + kMinLr) / 2, kLrTol);
  EXPECT_NEAR(s.at(100), kMinLr, kLrTol);
  const LrSchedule lin = schedule(LrDecay::Linear, 0, 101);
  EXPECT_NEAR(lin.at(0), kLr, kLrTol);
  EXPECT_NEAR(lin.at(25), kMinLr + (kLr - kMinLr) * 0.75, kLrTol);
  EXPECT_NEAR(schedule(LrDecay::Constant, 0, 101).at(0), kLr, kLrTol);
}

TEST(LrSchedule, RunShorterThanWarmUp) {
  // total_steps <= warmup_steps: the run only warms up (no division by a zero or negative span), and
  // the schedule stays at the peak past warm-up, as there is no decay span.
  for (LrDecay decay : {LrDecay::Cosine, LrDecay::Linear})
    for (int64_t total : {1, 5, 10, 11}) {
      SCOPED_TRACE("total_steps=" + std::to_string(total));
      const LrSchedule s = schedule(decay, 10, total);
      for (int64_t k = 0; k < 10; ++k) EXPECT_NEAR(s.at(k), kLr * static_cast<double>(k + 1) / 10.0, kLrTol) << k;
      for (int64_t k : {10, 11, 50}) {
        EXPECT_TRUE(std::isfinite(s.at(k))) << k;
        EXPECT_NEAR(s.at(k), kLr, kLrTol) << k;
      }
    }
  // One-step run without warm-up: the only step is at the peak.
  EXPECT_NEAR(schedule(LrDecay::Cosine, 0, 1).at(0), kLr, kLrTol);
}

// ---------------------------------------------------------------------------------------------
// Gradient norm and clipping
// ---------------------------------------------------------------------------------------------

// Gradients (3, 4) and (0, 12) (an expert shard): the norm is exactly 13.
ParameterRegistry norm_registry() {
  ParameterRegistry registry;
  Tensor dense = Tensor::from({2}, {3.0f, 4.0f}), expert = Tensor::from({2}, {0.0f, -12.0f});
  registry.add("dense", Tensor::zeros({2}), dense, ParamKind::Dense, true);
  registry.add("expert", Tensor::zeros({2}), expert, ParamKind::Expert, true);
  registry.flatten_gradients();
  return registry;
}

std::vector<float> all_grads(const ParameterRegistry& registry) {
  std::vector<float> out;
  for (const Parameter& p : registry.all()) out.insert(out.end(), p.grad.f32(), p.grad.f32() + p.grad.numel());
  return out;
}

TEST(GradNorm, OneProcessIsSqrtOfSumOfSquares) {
  ParameterRegistry registry = norm_registry();
  EXPECT_EQ(global_grad_norm(registry, nullptr), 13.0) << "exact: 9 + 16 + 144 = 169";

  // Random gradients over dense and expert parameters, against a double sum written here.
  ParameterRegistry big = make_registry();
  fill_grads(big, 7);
  double sum = 0.0;
  for (float g : all_grads(big)) sum += static_cast<double>(g) * g;
  // Both are double sums of the same float squares, grouped differently: ~1e-16 relative.
  EXPECT_NEAR(global_grad_norm(big, nullptr), std::sqrt(sum), 1e-12 * std::sqrt(sum));

  // With one-process groups (ep = 1 over a single-rank communicator) the result is the same.
  std::unique_ptr<Communicator> local = make_local_communicator();
  const ProcessGroups groups = make_process_groups(*local, 1, 4);
  EXPECT_EQ(global_grad_norm(registry, &groups), 13.0);
}

TEST(GradNorm, ClipBelowMaxIsANoOp) {
  for (double max_norm : {20.0, 13.0}) {  // norm == max_norm: not above, untouched
    ParameterRegistry registry = norm_registry();
    const std::vector<float> before = all_grads(registry);
    EXPECT_EQ(clip_gradients(registry, 13.0, max_norm), 1.0) << max_norm;
    EXPECT_EQ(all_grads(registry), before) << "gradients changed with max_norm " << max_norm;
  }
}

TEST(GradNorm, ClipAboveMaxScalesExactly) {
  ParameterRegistry registry = norm_registry();
  const std::vector<float> before = all_grads(registry);
  const double scale = clip_gradients(registry, 13.0, 5.2);
  EXPECT_DOUBLE_EQ(scale, 0.4);
  const std::vector<float> after = all_grads(registry);
  for (size_t i = 0; i < before.size(); ++i)
    EXPECT_FLOAT_EQ(after[i], static_cast<float>(before[i] * 0.4)) << i;  // one float32 rounding
  // The clipped gradients have norm max_norm, up to the float32 rounding of each element (~1e-7).
  EXPECT_NEAR(global_grad_norm(registry, nullptr), 5.2, 5.2 * 1e-6);

  // Exactly representable case: halving.
  ParameterRegistry half = norm_registry();
  EXPECT_EQ(clip_gradients(half, 13.0, 6.5), 0.5);
  EXPECT_EQ(all_grads(half), (std::vector<float>{1.5f, 2.0f, 0.0f, -6.0f}));
}

TEST(GradNorm, MaxNormZeroOrNegativeIsOff) {
  for (double max_norm : {0.0, -1.0}) {
    ParameterRegistry registry = norm_registry();
    const std::vector<float> before = all_grads(registry);
    EXPECT_EQ(clip_gradients(registry, 13.0, max_norm), 1.0) << max_norm;
    EXPECT_EQ(all_grads(registry), before) << max_norm;
  }
}

TEST(GradNorm, NaNNormLeavesGradientsToTheCaller) {
  ParameterRegistry registry = norm_registry();
  const std::vector<float> before = all_grads(registry);
  EXPECT_EQ(clip_gradients(registry, std::numeric_limits<double>::quiet_NaN(), 1.0), 1.0);
  EXPECT_EQ(all_grads(registry), before);
}

}  // namespace
}  // namespace moe
