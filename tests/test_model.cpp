// Tests of the transformer model's pieces (core/model/*, and the attention ops of core/ops.h): forwards
// against straightforward double-precision references, backwards against central finite differences,
// causality, accumulation, argument checks, and the whole TransformerLM's gradients over every
// parameter in each combination of positions, tying, shared experts and norm kind.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/check.h"
#include "core/model/attention_layer.h"
#include "core/model/dense_ffn.h"
#include "core/model/norm_layer.h"
#include "core/model/transformer.h"
#include "core/moe/moe_layer.h"
#include "core/ops.h"
#include "core/optim_ops.h"
#include "core/parameter_names.h"
#include "core/parameters.h"
#include "core/random.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

constexpr uint64_t kSeed = 4321;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

// ---- finite differences (the checker is in test_util.h) ----

// `count` distinct elements of t, spread by a random permutation seeded by `name` (all when fewer).
std::vector<int64_t> sample_elements(const Tensor& t, int64_t count, const std::string& name) {
  std::vector<int64_t> e = all_elements(t);
  if (t.numel() <= count) return e;
  std::mt19937_64 rng(stream_id(kSeed, name));
  std::shuffle(e.begin(), e.end(), rng);
  e.resize(static_cast<size_t>(count));
  return e;
}

// Op and layer checks: the forwards run in float32 on O(1) inputs and the loss L = sum(y r) is
// summed in double. Rounding dominates: one input moves up to a few thousand float32 outputs (a key
// of the 150-token case, every output of a layer), each off by ~1e-7 relative, so L carries ~3e-6 of
// noise, ~1.5e-4 after dividing by 2h with h = 1e-2 (a smaller h is worse: at 1e-3 the errors
// measured 10x larger). Truncation h^2 |f'''| / 6 stays below ~1e-4 for softmax attention, norms and
// activations on O(1) inputs. Allowed: 1e-3 absolute + 5e-3 relative, ~4.5x the worst error measured
// (the AttentionLayer's w_qkv, gradients up to ~9; MOE_TEST_VERBOSE=1 prints every tally), while a
// wrong term, sign or factor moves these O(0.1 .. 10) gradients by far more.
constexpr FdTolerance kOpTol{1e-2f, 1e-3, 5e-3};
// The largest |finite difference| of an op check must exceed 10 atol, or the check is vacuous.
constexpr double kOpNotVacuous = 10 * kOpTol.atol;

// ---- references ----

// Rotary in double: the pair (2i, 2i+1) of each head of row n rotated by p * theta^(-2i/Dh), p = n % S
// or positions[n].
std::vector<double> ref_rotary(const Tensor& x, int64_t H, int64_t S, double theta, const Tensor* positions = nullptr) {
  const int64_t N = x.dim(0), C = x.dim(1), Dh = C / H;
  std::vector<double> y(static_cast<size_t>(N * C));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Dh / 2; ++i) {
        const int64_t position = positions != nullptr ? positions->i32()[n] : n % S;
        const double angle = static_cast<double>(position) * std::pow(theta, -2.0 * i / Dh);
        const int64_t c = n * C + h * Dh + 2 * i;
        const double x0 = x.f32()[c], x1 = x.f32()[c + 1];
        y[c] = x0 * std::cos(angle) - x1 * std::sin(angle);
        y[c + 1] = x0 * std::sin(angle) + x1 * std::cos(angle);
      }
  return y;
}

// Causal attention in double, by the definition: a full (S, S) softmax per (sequence, head) with an
// explicit -infinity mask (with document positions: also on the keys before the query's document, found
// here by walking back from the query to the token whose position is 0, not from positions[n] itself). The forward's out (N, C) and lse (B, H, S); given dout, the gradients from
// the softmax's Jacobian, dS = P * (dP - rowsum(P * dP)) with dP = dout V^T (not the kernels'
// D = rowsum(dout * out)):  dq = scale dS K,  dk = scale dS^T Q,  dv = P^T dout.
struct RefAttention {
  std::vector<double> out, lse, dq, dk, dv;
};
RefAttention ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t H, int64_t S,
                           const Tensor* dout = nullptr, const Tensor* positions = nullptr) {
  const int64_t N = q.dim(0), C = q.dim(1), Dh = C / H, B = N / S;
  RefAttention r;
  for (auto* vec : {&r.out, &r.dq, &r.dk, &r.dv}) vec->assign(static_cast<size_t>(N * C), 0.0);
  r.lse.assign(static_cast<size_t>(B * H * S), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(Dh));
  const double inf = std::numeric_limits<double>::infinity();
  auto at = [&](const Tensor& t, int64_t b, int64_t s, int64_t h, int64_t c) {
    return static_cast<double>(t.f32()[(b * S + s) * C + h * Dh + c]);
  };
  auto index = [&](int64_t b, int64_t s, int64_t h, int64_t c) { return (b * S + s) * C + h * Dh + c; };
  std::vector<double> P(static_cast<size_t>(S * S)), dP(static_cast<size_t>(S * S));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < S; ++i) {
        double* p = P.data() + i * S;
        double m = -inf;
        int64_t doc_start = 0;  // the last token at or before i that starts a document
        if (positions != nullptr)
          for (doc_start = i; positions->i32()[b * S + doc_start] != 0;) --doc_start;
        for (int64_t j = 0; j < S; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < Dh; ++c) dot += at(q, b, i, h, c) * at(k, b, j, h, c);
          p[j] = j > i || j < doc_start ? -inf : dot * scale;  // the causal (and document) mask
          m = std::max(m, p[j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < S; ++j) sum += std::exp(p[j] - m);
        r.lse[(b * H + h) * S + i] = m + std::log(sum);
        for (int64_t j = 0; j < S; ++j) p[j] = std::exp(p[j] - m) / sum;
        for (int64_t j = 0; j < S; ++j)
          for (int64_t c = 0; c < Dh; ++c) r.out[index(b, i, h, c)] += p[j] * at(v, b, j, h, c);
      }
      if (dout == nullptr) continue;
      for (int64_t i = 0; i < S; ++i) {
        double row_dot = 0.0;  // rowsum(P * dP)
        for (int64_t j = 0; j < S; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < Dh; ++c) dot += at(*dout, b, i, h, c) * at(v, b, j, h, c);
          dP[i * S + j] = dot;
          row_dot += P[i * S + j] * dot;
        }
        for (int64_t j = 0; j < S; ++j) {
          const double p = P[i * S + j], ds = p * (dP[i * S + j] - row_dot);
          for (int64_t c = 0; c < Dh; ++c) {
            r.dq[index(b, i, h, c)] += scale * ds * at(k, b, j, h, c);
            r.dk[index(b, j, h, c)] += scale * ds * at(q, b, i, h, c);
            r.dv[index(b, j, h, c)] += p * at(*dout, b, i, h, c);
          }
        }
      }
    }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding
// ---------------------------------------------------------------------------------------------

TEST(Rotary, MatchesTheDoublePrecisionDefinition) {
  const int64_t B = 2, S = 7, H = 3, Dh = 6;
  Tensor x = normal_tensor({B * S, H * Dh}, 1.f, kSeed, "rope.x");
  Tensor y = Tensor::empty(x.shape());
  rotary_forward(y, x, H, S, 10000.f);
  const std::vector<double> ref = ref_rotary(x, H, S, 10000.0);
  // cos and sin rounded to float (~6e-8 relative) and two float products per output: < 3e-7 |x|.
  const double tol = 1e-6 * max_abs(x);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y.f32()[i], ref[i], tol) << "element " << i;
}

TEST(Rotary, StaysAccurateAtLargePositions) {
  // s * freq reaches thousands of radians: an angle formed in float32 would be off by ~1e-4 rad.
  const int64_t S = 4096, H = 1, Dh = 8;
  Tensor x = normal_tensor({S, H * Dh}, 1.f, kSeed, "rope.long");
  Tensor y = Tensor::empty(x.shape());
  rotary_forward(y, x, H, S, 10000.f);
  const std::vector<double> ref = ref_rotary(x, H, S, 10000.0);
  const double tol = 1e-6 * max_abs(x);
  for (int64_t i = (S - 8) * Dh; i < y.numel(); ++i) ASSERT_NEAR(y.f32()[i], ref[i], tol) << "element " << i;
}

TEST(Rotary, PositionZeroIsIdentityAndEveryPairKeepsItsNorm) {
  const int64_t B = 3, S = 4, H = 2, Dh = 8, C = H * Dh;
  Tensor x = normal_tensor({B * S, C}, 1.f, kSeed, "rope.norm");
  Tensor y = Tensor::empty(x.shape());
  rotary_forward(y, x, H, S, 10000.f);
  for (int64_t n = 0; n < B * S; ++n) {
    for (int64_t c = 0; c < C; c += 2) {
      const float x0 = x.f32()[n * C + c], x1 = x.f32()[n * C + c + 1];
      const float y0 = y.f32()[n * C + c], y1 = y.f32()[n * C + c + 1];
      if (n % S == 0) {  // angle 0: cos = 1, sin = 0 exactly
        ASSERT_EQ(y0, x0) << "row " << n << " col " << c;
        ASSERT_EQ(y1, x1) << "row " << n << " col " << c;
      }
      const double norm_x = std::hypot(x0, x1), norm_y = std::hypot(y0, y1);
      ASSERT_NEAR(norm_y, norm_x, 1e-6 * (1.0 + norm_x)) << "row " << n << " col " << c;
    }
  }
  // Position s > 0 really rotates (the first pair by s radians).
  EXPECT_NE(y.f32()[1 * C], x.f32()[1 * C]);
}

TEST(Rotary, InPlaceMatchesOutOfPlaceAndBackwardIsTheInverseAccumulated) {
  const int64_t B = 2, S = 6, H = 2, Dh = 4;
  Tensor x = normal_tensor({B * S, H * Dh}, 1.f, kSeed, "rope.inv");
  Tensor y = Tensor::empty(x.shape());
  rotary_forward(y, x, H, S, 500.f);
  Tensor in_place = x.clone();
  rotary_forward(in_place, in_place, H, S, 500.f);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(in_place.f32()[i], y.f32()[i]) << i;
  // The backward applies R^T = R^-1: from y it recovers x, and a second call adds it again.
  Tensor dx = Tensor::zeros(x.shape());
  rotary_backward(dx, y, H, S, 500.f);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_NEAR(dx.f32()[i], x.f32()[i], 1e-6) << i;
  rotary_backward(dx, y, H, S, 500.f);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_NEAR(dx.f32()[i], 2 * x.f32()[i], 2e-6) << i;
}

TEST(Rotary, BackwardMatchesFiniteDifferences) {
  const int64_t B = 2, S = 5, H = 2, Dh = 4;
  Tensor x = normal_tensor({B * S, H * Dh}, 1.f, kSeed, "rope.fd.x");
  Tensor r = normal_tensor({B * S, H * Dh}, 1.f, kSeed, "rope.fd.r");
  Tensor y = Tensor::empty(x.shape());
  Tensor dx = Tensor::zeros(x.shape());
  rotary_backward(dx, r, H, S, 10000.f);
  expect_gradient("rotary dx", x, dx, [&] {
    rotary_forward(y, x, H, S, 10000.f);
    return weighted_sum(y, r);
  }, kOpTol, kOpNotVacuous);
}

// ---------------------------------------------------------------------------------------------
// Causal attention
// ---------------------------------------------------------------------------------------------

struct AttentionShape {
  int64_t B, H, S, Dh;
  const char* name;
};

class CausalAttention : public ::testing::TestWithParam<AttentionShape> {};

// Inputs q, k, v, dout (B*S, H*Dh) drawn as "<tag>.q", ... , and the forward's out (B*S, H*Dh) and
// lse (B, H, S), poisoned with NaN so an element the forward leaves unwritten shows.
struct AttentionTensors {
  AttentionTensors(const AttentionShape& s, const std::string& tag)
      : q(normal_tensor({s.B * s.S, s.H * s.Dh}, 1.f, kSeed, tag + ".q")),
        k(normal_tensor({s.B * s.S, s.H * s.Dh}, 1.f, kSeed, tag + ".k")),
        v(normal_tensor({s.B * s.S, s.H * s.Dh}, 1.f, kSeed, tag + ".v")),
        dout(normal_tensor({s.B * s.S, s.H * s.Dh}, 1.f, kSeed, tag + ".dout")),
        out(Tensor::empty({s.B * s.S, s.H * s.Dh})), lse(Tensor::empty({s.B, s.H, s.S})) {
    out.fill(std::numeric_limits<float>::quiet_NaN());
    lse.fill(std::numeric_limits<float>::quiet_NaN());
  }
  Tensor q, k, v, dout, out, lse;
};

// The CPU works in blocks of 64 query rows x 128 keys (core/cpu/attention.cpp): one token; part of a
// block; exactly one query block; 150 = two query blocks and a partial one, one key block and a partial
// one, with 8 (sequence, head) pairs in parallel; head_dim 64 and 128; 300 tokens, where with documents
// (test_document_positions) the last query block meets no key of the first key block.
INSTANTIATE_TEST_SUITE_P(Shapes, CausalAttention,
                         ::testing::Values(AttentionShape{2, 2, 5, 4, "Small"}, AttentionShape{2, 3, 1, 8, "OneToken"},
                                           AttentionShape{1, 2, 64, 32, "OneQueryBlock"},
                                           AttentionShape{2, 4, 150, 16, "PartialBlocksParallel"},
                                           AttentionShape{1, 2, 130, 64, "HeadDim64"},
                                           AttentionShape{1, 1, 97, 128, "HeadDim128"},
                                           AttentionShape{1, 2, 300, 16, "DocumentsSkipAKeyBlock"}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

// Tolerances against the double reference, on |got - ref| / (1 + |ref|). A score q . k / sqrt(Dh) of
// O(1) inputs carries ~sqrt(Dh) u / sqrt(Dh) ~ u = 6e-8 of rounding (a random walk over Dh products),
// exp 2e-7 relative (fast_exp; expf on CUDA), the running max and sum one rounding per block: P is
// within ~5e-7 relative, and out and lse (convex combinations and a log of those) within ~1e-6:
// 5e-6. The gradients add sums of up to S such terms times O(1) values (the first keys collect
// probability from every later query, sum_i P_i0 ~ ln S) and the difference dP - D: 1e-5. Measured
// at most 4.5e-7 (forward) and 1.1e-6 (backward) over these shapes (MOE_TEST_VERBOSE=1 prints them),
// while a wrong mask, scale or missing block term moves elements by O(0.01 .. 1).
constexpr double kForwardTol = 5e-6;
constexpr double kBackwardTol = 1e-5;

void expect_close(const char* what, const Tensor& got, const std::vector<double>& ref, double tol) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(ref.size())) << what;
  double worst = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double err = std::fabs(got.f32()[i] - ref[i]) / (1 + std::fabs(ref[i]));
    ASSERT_LE(err, tol) << what << " element " << i << ": " << got.f32()[i] << " vs " << ref[i];
    worst = std::max(worst, err);
  }
  if (std::getenv("MOE_TEST_VERBOSE") != nullptr) std::printf("%s: worst relative error %.3g\n", what, worst);
}

// The attention backward's dq, dk, dv against finite differences of `loss` (labelled `what`). Shapes of
// at most 64 elements check every element; larger ones 24 sampled per input (named by `sample`), spread
// over every block. S = 1: out = v, so the gradients of q and k are exactly 0, and the check is that they are.
template <class Loss>
void expect_attention_gradients(const std::string& what, const std::string& sample, Tensor& q, Tensor& k, Tensor& v,
                                const Tensor& dq, const Tensor& dk, const Tensor& dv, int64_t S, Loss& loss) {
  const bool small = q.numel() <= 64;
  const double qk_vacuous = S == 1 ? -1.0 : kOpNotVacuous;
  expect_gradient(what + " dq", q, dq, loss, kOpTol, qk_vacuous,
                  small ? all_elements(q) : sample_elements(q, 24, sample + ".q"));
  expect_gradient(what + " dk", k, dk, loss, kOpTol, qk_vacuous,
                  small ? all_elements(k) : sample_elements(k, 24, sample + ".k"));
  expect_gradient(what + " dv", v, dv, loss, kOpTol, kOpNotVacuous,
                  small ? all_elements(v) : sample_elements(v, 24, sample + ".v"));
}

TEST_P(CausalAttention, ForwardAndBackwardMatchTheFullSoftmaxInDouble) {
  const auto [B, H, S, Dh, name] = GetParam();
  AttentionTensors t(GetParam(), "att");
  causal_attention_forward(t.out, t.lse, t.q, t.k, t.v, H, S);
  Tensor dq = Tensor::zeros(t.q.shape()), dk = Tensor::zeros(t.q.shape()), dv = Tensor::zeros(t.q.shape());
  causal_attention_backward(&dq, &dk, &dv, t.dout, t.q, t.k, t.v, t.out, t.lse, H, S);
  const RefAttention ref = ref_attention(t.q, t.k, t.v, H, S, &t.dout);
  expect_close("out", t.out, ref.out, kForwardTol);
  expect_close("lse", t.lse, ref.lse, kForwardTol);
  expect_close("dq", dq, ref.dq, kBackwardTol);
  expect_close("dk", dk, ref.dk, kBackwardTol);
  expect_close("dv", dv, ref.dv, kBackwardTol);
}

// bfloat16 q, k and v are read as they are: the results are those of float32 inputs holding the same
// (bfloat16-rounded) values, bit for bit.
TEST_P(CausalAttention, Bf16InputsGiveTheResultsOfTheirFloat32Values) {
  const auto [B, H, S, Dh, name] = GetParam();
  AttentionTensors t(GetParam(), "bf16");
  Tensor q16 = Tensor::empty(t.q.shape(), DType::BF16), k16 = q16.clone(), v16 = q16.clone();
  convert(q16, t.q);
  convert(k16, t.k);
  convert(v16, t.v);
  Tensor q = Tensor::empty(t.q.shape()), k = q.clone(), v = q.clone();
  convert(q, q16);
  convert(k, k16);
  convert(v, v16);
  Tensor out16 = t.out.clone(), lse16 = t.lse.clone();
  causal_attention_forward(t.out, t.lse, q, k, v, H, S);
  causal_attention_forward(out16, lse16, q16, k16, v16, H, S);
  Tensor dq = Tensor::zeros(q.shape()), dk = dq.clone(), dv = dq.clone();
  Tensor dq16 = dq.clone(), dk16 = dq.clone(), dv16 = dq.clone();
  causal_attention_backward(&dq, &dk, &dv, t.dout, q, k, v, t.out, t.lse, H, S);
  causal_attention_backward(&dq16, &dk16, &dv16, t.dout, q16, k16, v16, out16, lse16, H, S);
  for (const auto& [a, b] : {std::pair{&t.out, &out16}, {&t.lse, &lse16}, {&dq, &dq16}, {&dk, &dk16}, {&dv, &dv16}})
    EXPECT_EQ(0, std::memcmp(a->f32(), b->f32(), a->numel() * sizeof(float)));
}

TEST_P(CausalAttention, ChangingAFutureTokenLeavesEarlierOutputsUnchanged) {
  const auto [B, H, S, Dh, name] = GetParam();
  const int64_t N = B * S, C = H * Dh;
  AttentionTensors tensors(GetParam(), "cau");
  auto& [q, k, v, dout, out, lse] = tensors;
  causal_attention_forward(out, lse, q, k, v, H, S);
  const Tensor before = out.clone();
  // A position in the last sequence; for S = 150, inside the third query block, after some of its rows.
  const int64_t b = B - 1, future = std::min(S - 1, S - S / 3);
  for (Tensor* t : {&q, &k, &v})
    for (int64_t c = 0; c < C; ++c) t->f32()[(b * S + future) * C + c] += 3.f;
  causal_attention_forward(out, lse, q, k, v, H, S);
  for (int64_t n = 0; n < N; ++n) {
    const bool may_change = n >= b * S + future;
    bool changed = false;
    for (int64_t c = 0; c < C; ++c) {
      if (!may_change) {  // rows before it use exactly the same arithmetic on exactly the same values
        ASSERT_EQ(out.f32()[n * C + c], before.f32()[n * C + c]) << "row " << n << " col " << c;
      }
      changed = changed || out.f32()[n * C + c] != before.f32()[n * C + c];
    }
    if (n == b * S + future) {
      EXPECT_TRUE(changed) << "the changed token's own output did not change";
    }
  }
}

TEST_P(CausalAttention, BackwardMatchesFiniteDifferences) {
  const auto [B, H, S, Dh, name] = GetParam();
  AttentionTensors t(GetParam(), "afd");
  auto& [q, k, v, r, out, lse] = t;
  causal_attention_forward(out, lse, q, k, v, H, S);
  Tensor dq = Tensor::zeros(q.shape()), dk = Tensor::zeros(q.shape()), dv = Tensor::zeros(q.shape());
  causal_attention_backward(&dq, &dk, &dv, r, q, k, v, out, lse, H, S);
  auto loss = [&] {
    causal_attention_forward(out, lse, q, k, v, H, S);
    return weighted_sum(out, r);
  };
  expect_attention_gradients("attention", "s", q, k, v, dq, dk, dv, S, loss);
}

// Documents packed into each sequence (test_document_positions): forward and backward match the
// reference with the document mask, and the backward matches finite differences of the masked forward.
// Tolerances as above: masking removes terms, it adds no rounding.
TEST_P(CausalAttention, DocumentMaskMatchesTheReferenceAndFiniteDifferences) {
  const auto [B, H, S, Dh, name] = GetParam();
  AttentionTensors t(GetParam(), "doc");
  auto& [q, k, v, r, out, lse] = t;
  const Tensor positions = test_document_positions(B, S);
  causal_attention_forward(out, lse, q, k, v, H, S, &positions);
  Tensor dq = Tensor::zeros(q.shape()), dk = Tensor::zeros(q.shape()), dv = Tensor::zeros(q.shape());
  causal_attention_backward(&dq, &dk, &dv, r, q, k, v, out, lse, H, S, &positions);
  const RefAttention ref = ref_attention(q, k, v, H, S, &r, &positions);
  expect_close("out", out, ref.out, kForwardTol);
  expect_close("lse", lse, ref.lse, kForwardTol);
  expect_close("dq", dq, ref.dq, kBackwardTol);
  expect_close("dk", dk, ref.dk, kBackwardTol);
  expect_close("dv", dv, ref.dv, kBackwardTol);
  auto loss = [&] {
    causal_attention_forward(out, lse, q, k, v, H, S, &positions);
    return weighted_sum(out, r);
  };
  expect_attention_gradients("masked attention", "d", q, k, v, dq, dk, dv, S, loss);
}

float at(const Tensor& t, int64_t row, int64_t col) { return t.f32()[row * t.dim(1) + col]; }

// The new tokens' rows of the cached attention are the full attention's rows at their positions: for a
// prefill (past 0), a decode step (one new token) and a split in between. The cache has rows past the
// sequence poisoned with NaN, as is out: a read of a key the query must not see, or an output left
// unwritten, shows as NaN. Both are within kForwardTol of the double reference (the full one blocked
// with fast_exp, the cached one direct with std::exp), so within 2 kForwardTol of each other.
TEST_P(CausalAttention, CachedAttentionGivesTheFullAttentionsRowsOfTheNewTokens) {
  const auto [B, H, S, Dh, name] = GetParam();
  AttentionTensors t(GetParam(), "cached");
  causal_attention_forward(t.out, t.lse, t.q, t.k, t.v, H, S);
  const int64_t C = H * Dh, T = S + 3;
  Tensor k_cache = Tensor::empty({B, T, C}), v_cache = Tensor::empty({B, T, C});
  k_cache.fill(std::numeric_limits<float>::quiet_NaN());
  v_cache.fill(std::numeric_limits<float>::quiet_NaN());
  for (int64_t b = 0; b < B; ++b) {
    k_cache.reshape({B * T, C}).rows(b * T, b * T + S).copy_from(t.k.rows(b * S, (b + 1) * S));
    v_cache.reshape({B * T, C}).rows(b * T, b * T + S).copy_from(t.v.rows(b * S, (b + 1) * S));
  }
  for (const int64_t past : {int64_t{0}, S / 2, S - 1}) {
    const int64_t n = S - past;
    Tensor q = Tensor::empty({B * n, C}), out = Tensor::empty({B * n, C});
    for (int64_t b = 0; b < B; ++b) q.rows(b * n, (b + 1) * n).copy_from(t.q.rows(b * S + past, (b + 1) * S));
    out.fill(std::numeric_limits<float>::quiet_NaN());
    cached_attention_forward(out, q, k_cache, v_cache, H, past);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < C; ++c) {
          const float full = at(t.out, b * S + past + i, c);
          ASSERT_NEAR(at(out, b * n + i, c), full, 2 * kForwardTol * (1 + std::fabs(full)))
              << "past " << past << ", sequence " << b << ", new token " << i << ", column " << c;
        }
  }
}

// Rotating n tokens per sequence at an offset is rotating them where they stand in a longer sequence:
// the same table rows, so the same bits.
TEST(Rotary, PositionOffsetRotatesAsTheLaterPositionsOfALongerSequence) {
  const int64_t B = 2, S = 9, H = 2, Dh = 6, C = H * Dh, past = 5, n = S - past;
  const Tensor x = normal_tensor({B * S, C}, 1.f, kSeed, "rope.offset");
  Tensor full = Tensor::empty(x.shape());
  rotary_forward(full, x, H, S, 10000.f);
  Tensor tail = Tensor::empty({B * n, C});
  for (int64_t b = 0; b < B; ++b) tail.rows(b * n, (b + 1) * n).copy_from(x.rows(b * S + past, (b + 1) * S));
  rotary_forward(tail, tail, H, n, 10000.f, nullptr, past);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < C; ++c) ASSERT_EQ(at(tail, b * n + i, c), at(full, b * S + past + i, c)) << b << " " << i;
}

TEST(Rotary, DocumentPositionsRotateByThePositionInTheDocument) {
  const int64_t B = 2, H = 2, S = 150, C = 8;
  const Tensor x = normal_tensor({B * S, C}, 1.f, kSeed, "rot.doc");
  const Tensor positions = test_document_positions(B, S);
  Tensor y = Tensor::empty(x.shape());
  rotary_forward(y, x, H, S, 10000.f, &positions);
  const std::vector<double> ref = ref_rotary(x, H, S, 10000.0, &positions);
  const double tol = 1e-6 * max_abs(x);  // as in MatchesTheDoublePrecisionDefinition
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y.f32()[i], ref[i], tol) << i;
  // The backward is the inverse rotation at the same positions: it undoes the forward (two rotations'
  // rounding, < 2 tol).
  Tensor back = Tensor::zeros(x.shape());
  rotary_backward(back, y, H, S, 10000.f, &positions);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_NEAR(back.f32()[i], x.f32()[i], 2 * tol) << i;
}

// A position beyond the token's place in its sequence (or negative) would reach into the previous
// sequence: every op that reads positions refuses it, naming the entry and its range.
TEST(CausalAttention, RefusesDocumentPositionsOutOfRange) {
  const int64_t H = 1, S = 4;
  AttentionTensors t({2, H, S, 2, "bad"}, "bad");
  Tensor positions = Tensor::from_ints({8}, {0, 1, 2, 3, 0, 1, 3, 0});  // [6] = 3 > 6 % 4
  const std::string expected = "positions[6] = 3 is out of range, expected [0, 3)";
  EXPECT_CONTAINS(error_message([&] { causal_attention_forward(t.out, t.lse, t.q, t.k, t.v, H, S, &positions); }),
                  expected);
  Tensor dq = Tensor::zeros(t.q.shape());
  EXPECT_CONTAINS(error_message([&] {
                    causal_attention_backward(&dq, nullptr, nullptr, t.dout, t.q, t.k, t.v, t.out, t.lse, H, S,
                                              &positions);
                  }),
                  expected);
  EXPECT_CONTAINS(error_message([&] { rotary_forward(dq, t.q, H, S, 10000.f, &positions); }), expected);
  positions.i32()[6] = -1;
  EXPECT_CONTAINS(error_message([&] { rotary_backward(dq, t.q, H, S, 10000.f, &positions); }),
                  "positions[6] = -1 is out of range");
  const Tensor wrong_shape = Tensor::zeros({7}, DType::I32);
  EXPECT_CONTAINS(error_message([&] { rotary_forward(dq, t.q, H, S, 10000.f, &wrong_shape); }), "positions");
}

TEST(CausalAttentionBackward, AccumulatesAndSkipsNullGradients) {
  const int64_t H = 2, S = 70;
  AttentionTensors t({2, H, S, 4, "acc"}, "acc");
  auto& [q, k, v, r, out, lse] = t;
  causal_attention_forward(out, lse, q, k, v, H, S);
  Tensor dq = Tensor::zeros(q.shape()), dk = Tensor::zeros(q.shape()), dv = Tensor::zeros(q.shape());
  causal_attention_backward(&dq, &dk, &dv, r, q, k, v, out, lse, H, S);
  const Tensor dq1 = dq.clone(), dk1 = dk.clone(), dv1 = dv.clone();
  causal_attention_backward(&dq, &dk, &dv, r, q, k, v, out, lse, H, S);
  // Twice the same GEMMs with beta = 1: 2x up to a few ulps of the FMA chain.
  for (int64_t i = 0; i < dq.numel(); ++i) {
    ASSERT_NEAR(dq.f32()[i], 2 * dq1.f32()[i], 1e-6 * (1 + std::fabs(dq1.f32()[i]))) << "dq " << i;
    ASSERT_NEAR(dk.f32()[i], 2 * dk1.f32()[i], 1e-6 * (1 + std::fabs(dk1.f32()[i]))) << "dk " << i;
    ASSERT_NEAR(dv.f32()[i], 2 * dv1.f32()[i], 1e-6 * (1 + std::fabs(dv1.f32()[i]))) << "dv " << i;
  }
  // Each gradient alone equals its share of the full call.
  for (int which = 0; which < 3; ++which) {
    Tensor g = Tensor::zeros(q.shape());
    causal_attention_backward(which == 0 ? &g : nullptr, which == 1 ? &g : nullptr, which == 2 ? &g : nullptr, r,
                              q, k, v, out, lse, H, S);
    const Tensor& full = which == 0 ? dq1 : which == 1 ? dk1 : dv1;
    for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.f32()[i], full.f32()[i]) << which << " " << i;
  }
}

TEST(AttentionOps, BadArgumentsNameTheProblem) {
  Tensor x = Tensor::zeros({10, 8}), y = Tensor::zeros({10, 8});
  Tensor lse = Tensor::zeros({2, 2, 5});
  EXPECT_CONTAINS(error_message([&] { rotary_forward(y, x, 2, 4, 10000.f); }), "rotary_forward",
                  "divisible by seq_len = 4");
  EXPECT_CONTAINS(error_message([&] { rotary_forward(y, x, 8, 5, 10000.f); }), "rotary_forward", "head_dim = 1",
                  "even");
  EXPECT_CONTAINS(error_message([&] { rotary_forward(y, x, 3, 5, 10000.f); }), "n_heads = 3");
  EXPECT_CONTAINS(error_message([&] { rotary_forward(y, x, 2, 5, 0.f); }), "theta = 0");
  Tensor bad_lse = Tensor::zeros({2, 2, 4});
  EXPECT_CONTAINS(error_message([&] { causal_attention_forward(y, bad_lse, x, x, x, 2, 5); }),
                  "causal_attention_forward", "lse", "(2, 2, 5)");
  Tensor short_v = Tensor::zeros({10, 6});
  EXPECT_CONTAINS(error_message([&] { causal_attention_forward(y, lse, x, x, short_v, 2, 5); }), "v", "(10, 8)");
  EXPECT_CONTAINS(
      error_message([&] { causal_attention_backward(&y, nullptr, nullptr, short_v, x, x, x, y, lse, 2, 5); }),
      "causal_attention_backward", "dout");
  EXPECT_CONTAINS(
      error_message([&] { causal_attention_backward(&y, nullptr, nullptr, x, x, x, x, short_v, lse, 2, 5); }),
      "causal_attention_backward", "out");
  Tensor w = Tensor::zeros({3, 7});
  EXPECT_CONTAINS(error_message([&] { linear_transposed_forward(y, x, w); }), "linear_transposed_forward", "w",
                  "(3, 8)");
  EXPECT_CONTAINS(error_message([&] { rotary_forward(y, x, 2, 5, 10000.f, nullptr, -1); }), "position_offset = -1");
  Tensor cache = Tensor::zeros({2, 6, 8}), q = Tensor::zeros({4, 8}), out = Tensor::zeros({4, 8});
  EXPECT_CONTAINS(error_message([&] { cached_attention_forward(out, q, cache, cache, 2, 5); }),
                  "cached_attention_forward", "past = 5 cached tokens + 2 new ones exceed the cache's T = 6");
  EXPECT_CONTAINS(error_message([&] { cached_attention_forward(out, Tensor::zeros({4, 6}), cache, cache, 2, 0); }),
                  "cached_attention_forward", "q has shape (4, 6), expected (B * n, 8)");
  EXPECT_CONTAINS(error_message([&] { cached_attention_forward(y, q, cache, cache, 2, 0); }), "out", "(4, 8)");
  EXPECT_CONTAINS(error_message([&] { cached_attention_forward(out, Tensor::zeros({3, 8}), cache, cache, 2, 0); }),
                  "q has shape (3, 8)", "B = 2");
  EXPECT_CONTAINS(error_message([&] { cached_attention_forward(out, q, cache, Tensor::zeros({2, 5, 8}), 2, 0); }),
                  "v_cache");
  EXPECT_CONTAINS(error_message([&] { cached_attention_forward(out, q, cache, cache, 3, 0); }), "n_heads = 3");
}

// ---------------------------------------------------------------------------------------------
// linear_transposed (the tied head)
// ---------------------------------------------------------------------------------------------

TEST(LinearTransposed, MatchesLinearWithTheTransposeAndFiniteDifferences) {
  const int64_t N = 6, in = 5, out = 7;
  Tensor x = normal_tensor({N, in}, 1.f, kSeed, "lt.x"), w = normal_tensor({out, in}, 1.f, kSeed, "lt.w");
  Tensor r = normal_tensor({N, out}, 1.f, kSeed, "lt.r");
  Tensor wt = Tensor::empty({in, out});
  for (int64_t i = 0; i < in; ++i)
    for (int64_t o = 0; o < out; ++o) wt.f32()[i * out + o] = w.f32()[o * in + i];
  Tensor y = Tensor::empty({N, out}), y_ref = Tensor::empty({N, out});
  linear_transposed_forward(y, x, w);
  linear_forward(y_ref, x, wt, nullptr);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_NEAR(y.f32()[i], y_ref.f32()[i], 1e-5) << i;
  Tensor dx = Tensor::zeros(x.shape()), dw = Tensor::zeros(w.shape());
  linear_transposed_backward(&dx, &dw, r, x, w);
  auto loss = [&] {
    linear_transposed_forward(y, x, w);
    return weighted_sum(y, r);
  };
  expect_gradient("linear_transposed dx", x, dx, loss, kOpTol, kOpNotVacuous);
  expect_gradient("linear_transposed dw", w, dw, loss, kOpTol, kOpNotVacuous);
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

// Randomises a layer parameter in place (norm gains around 1, everything else around 0).
void randomise(Tensor& t, float mean, float std, const std::string& name) {
  Tensor noise = normal_tensor(t.shape(), std, kSeed, name);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = mean + noise.f32()[i];
}

// One forward and backward of a layer on x (N, d) with dy = r, both drawn as "<tag>.x" and "<tag>.r";
// loss() runs the forward again and returns sum(y * r), the loss whose gradients backward gave.
template <typename Layer>
struct LayerProbe {
  LayerProbe(Layer& probed, int64_t N, int64_t d, const std::string& tag)
      : layer(probed), x(normal_tensor({N, d}, 1.f, kSeed, tag + ".x")), r(normal_tensor({N, d}, 1.f, kSeed, tag + ".r")),
        y(Tensor::empty({N, d})), dx(Tensor::zeros({N, d})) {
    layer.forward(y, x);
    layer.backward(dx, r);
  }
  double loss() {
    layer.forward(y, x);
    return weighted_sum(y, r);
  }
  Layer& layer;
  Tensor x, r, y, dx;
};

TEST(NormLayer, BothKindsMatchFiniteDifferences) {
  for (NormKind kind : {NormKind::RMSNorm, NormKind::LayerNorm}) {
    SCOPED_TRACE(kind == NormKind::RMSNorm ? "rmsnorm" : "layernorm");
    const int64_t N = 6, d = 8;
    NormLayer norm(kind, d);
    randomise(norm.weights.g, 1.f, 0.3f, "norm.g");
    if (kind == NormKind::LayerNorm) randomise(norm.weights.b, 0.f, 0.3f, "norm.b");
    LayerProbe probe(norm, N, d, "norm");
    auto loss = [&] { return probe.loss(); };
    expect_gradient("norm dx", probe.x, probe.dx, loss, kOpTol, kOpNotVacuous);
    expect_gradient("norm dg", norm.weights.g, norm.grads.g, loss, kOpTol, kOpNotVacuous);
    if (kind == NormKind::LayerNorm)
      expect_gradient("norm db", norm.weights.b, norm.grads.b, loss, kOpTol, kOpNotVacuous);
    // Parameters as the registry sees them: gains (and biases) without weight decay.
    ParameterRegistry registry;
    norm.register_parameters(registry, "n");
    ASSERT_EQ(registry.all().size(), kind == NormKind::LayerNorm ? 2u : 1u);
    for (const Parameter& p : registry.all()) {
      EXPECT_FALSE(p.weight_decay) << p.name;
      EXPECT_EQ(p.kind, ParamKind::Dense) << p.name;
    }
    EXPECT_EQ(registry.get("n.g").value.f32(), norm.weights.g.f32()) << "the registry shares the layer's storage";
  }
}

TEST(DenseFFN, EveryActivationMatchesFiniteDifferences) {
  for (Activation act : {Activation::ReLU, Activation::GELU, Activation::SwiGLU}) {
    SCOPED_TRACE(to_string(act));
    const int64_t N = 6, d = 5;
    DenseFFNConfig cfg;
    cfg.d_model = d;
    cfg.hidden = 7;
    cfg.activation = act;
    cfg.init_std = 0.5f;
    cfg.out_init_std = 0.5f;
    DenseFFN ffn(cfg, kSeed, "ffn");
    EXPECT_EQ(ffn.weights.w_in.shape(), (Shape{d, act == Activation::SwiGLU ? 14 : 7}));
    LayerProbe probe(ffn, N, d, "ffn");
    // ReLU is piecewise linear: an element whose +-h moves a pre-activation across 0 is skipped.
    auto eval = [&] {
      FdPoint point{probe.loss(), {}};
      if (act == Activation::ReLU)
        for (int64_t i = 0; i < ffn.pre_activation().numel(); ++i)
          point.signature.push_back(ffn.pre_activation().f32()[i] > 0.f);
      return point;
    };
    const FdPoint base = eval();
    FdTally tally;
    tally += expect_piecewise_gradient("ffn dx", probe.x, probe.dx, eval, base, kOpTol);
    tally += expect_piecewise_gradient("ffn w_in", ffn.weights.w_in, ffn.grads.w_in, eval, base, kOpTol);
    tally += expect_piecewise_gradient("ffn w_out", ffn.weights.w_out, ffn.grads.w_out, eval, base, kOpTol);
    EXPECT_LT(tally.skipped, (tally.checked + tally.skipped) / 10) << "too many ReLU kinks crossed";
    EXPECT_GT(tally.max_abs_fd, 0.1);
  }
}

class GroupedAttention : public ::testing::TestWithParam<int64_t> {};  // the parameter: n_kv_heads

AttentionConfig small_attention(bool rotary) {
  AttentionConfig cfg;
  cfg.d_model = 8;
  cfg.n_heads = 2;
  cfg.seq_len = 5;
  cfg.rotary = rotary;
  cfg.rope_theta = 100.f;  // larger angles between the 5 positions than 10000 gives
  cfg.init_std = 0.5f;
  cfg.out_init_std = 0.5f;
  return cfg;
}

TEST(AttentionLayer, MatchesFiniteDifferencesWithAndWithoutRotaryAndGroupedHeads) {
  for (auto [rotary, kv_heads] : {std::pair{false, 2}, {true, 2}, {true, 1}}) {
    SCOPED_TRACE(std::string(rotary ? "rotary" : "no positions") + ", kv heads " + std::to_string(kv_heads));
    AttentionConfig cfg = small_attention(rotary);
    cfg.n_kv_heads = kv_heads;
    const int64_t N = 2 * cfg.seq_len, d = cfg.d_model;
    AttentionLayer attn(cfg, kSeed, "attn");
    LayerProbe probe(attn, N, d, "al");
    auto loss = [&] { return probe.loss(); };
    expect_gradient("attn dx", probe.x, probe.dx, loss, kOpTol, kOpNotVacuous);
    expect_gradient("attn w_qkv", attn.weights.w_qkv, attn.grads.w_qkv, loss, kOpTol, kOpNotVacuous);
    expect_gradient("attn w_out", attn.weights.w_out, attn.grads.w_out, loss, kOpTol, kOpNotVacuous);
  }
}

TEST_P(GroupedAttention, ForwardIsTheComposedReference) {
  // y = attention(rotary(x Wq), rotary(x Wk), x Wv) Wout, recomputed here from the ops and the
  // double-precision references; query head h reads key/value head h / (H / KV).
  AttentionConfig cfg = small_attention(true);
  cfg.n_heads = 4;
  cfg.n_kv_heads = GetParam();
  const int64_t S = cfg.seq_len, N = 3 * S, d = cfg.d_model, H = cfg.n_heads, Dh = cfg.head_dim();
  const int64_t KV = cfg.kv_heads(), W = cfg.qkv_width(), group = H / KV;
  AttentionLayer attn(cfg, kSeed, "attn");
  ASSERT_EQ(attn.weights.w_qkv.shape(), (Shape{d, d + 2 * KV * Dh}));
  Tensor x = normal_tensor({N, d}, 1.f, kSeed, "alr.x");
  Tensor y = Tensor::empty({N, d});
  attn.forward(y, x);
  const float* w = attn.weights.w_qkv.f32();
  Tensor q = Tensor::zeros({N, d}), k = Tensor::zeros({N, d}), v = Tensor::zeros({N, d});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < d; ++c) {
      const int64_t kv_col = (c / Dh / group) * Dh + c % Dh;
      double sq = 0, sk = 0, sv = 0;
      for (int64_t i = 0; i < d; ++i) {
        const double xi = x.f32()[n * d + i];
        sq += xi * w[i * W + c];
        sk += xi * w[i * W + d + kv_col];
        sv += xi * w[i * W + d + KV * Dh + kv_col];
      }
      q.f32()[n * d + c] = static_cast<float>(sq);
      k.f32()[n * d + c] = static_cast<float>(sk);
      v.f32()[n * d + c] = static_cast<float>(sv);
    }
  const std::vector<double> qr = ref_rotary(q, H, S, cfg.rope_theta), kr = ref_rotary(k, H, S, cfg.rope_theta);
  for (int64_t i = 0; i < q.numel(); ++i) {
    q.f32()[i] = static_cast<float>(qr[i]);
    k.f32()[i] = static_cast<float>(kr[i]);
  }
  const std::vector<double> out = ref_attention(q, k, v, H, S).out;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < d; ++c) {
      double yc = 0;
      for (int64_t i = 0; i < d; ++i) yc += out[n * d + i] * attn.weights.w_out.f32()[i * d + c];
      ASSERT_NEAR(y.f32()[n * d + c], yc, 2e-5) << "row " << n << " col " << c;
    }
}
INSTANTIATE_TEST_SUITE_P(KvHeads, GroupedAttention, ::testing::Values(4, 2, 1));

TEST(AttentionLayer, SavesNoProbabilitiesForBackward) {
  // S = 512 and Dh = 8: the (B, H, S, S) probabilities would be 64x the layer's O(N d) activations.
  AttentionConfig cfg = small_attention(true);
  cfg.seq_len = 512;
  const int64_t N = 2 * cfg.seq_len, d = cfg.d_model, H = cfg.n_heads;
  AttentionLayer attn(cfg, kSeed, "attn");
  Tensor x = normal_tensor({N, d}, 1.f, kSeed, "mem.x"), y = Tensor::empty({N, d});
  attn.forward(y, x);
  // qkv (3d), q, k, v (d each), the output before its projection (d), lse (H), the split indices (3H).
  EXPECT_EQ(attn.saved_numel(), N * (7 * d + 4 * H));
  EXPECT_LT(attn.saved_numel() * 10, N * H * cfg.seq_len);
  Tensor dx = Tensor::zeros({N, d});
  attn.backward(dx, normal_tensor({N, d}, 1.f, kSeed, "mem.dy"));
  EXPECT_EQ(attn.saved_numel(), N * (7 * d + 4 * H));
}

TEST(AttentionLayer, BadConfigAndInputNameTheProblem) {
  AttentionConfig cfg = small_attention(true);
  cfg.n_heads = 3;
  EXPECT_CONTAINS(error_message([&] { AttentionLayer(cfg, kSeed, "a"); }), "n_heads = 3", "d_model = 8");
  cfg.n_heads = 8;  // head_dim 1: no pair to rotate
  EXPECT_CONTAINS(error_message([&] { AttentionLayer(cfg, kSeed, "a"); }), "head_dim", "even");
  cfg.n_heads = 4;
  cfg.n_kv_heads = 3;
  EXPECT_CONTAINS(error_message([&] { AttentionLayer(cfg, kSeed, "a"); }), "n_kv_heads = 3", "divide n_heads = 4");
  AttentionLayer attn(small_attention(true), kSeed, "a");
  Tensor x = Tensor::zeros({7, 8}), y = Tensor::zeros({7, 8});
  EXPECT_CONTAINS(error_message([&] { attn.forward(y, x); }), "AttentionLayer::forward", "seq_len = 5");
  Tensor dx = Tensor::zeros({10, 8});
  EXPECT_CONTAINS(error_message([&] { attn.backward(dx, dx); }), "called before forward");
}

// ---------------------------------------------------------------------------------------------
// The whole model
// ---------------------------------------------------------------------------------------------

// The tiny model of the finite-difference tests: V = 11, d = 8, 2 layers of 2 heads, S = 5, layer 1
// an MoE layer of E = 4 experts, top-2, dropless.
TransformerConfig tiny_config(PositionKind positions, bool tied, int64_t shared_experts, NormKind norm) {
  TransformerConfig cfg = transformer_test_config(11, 8, 2, 2, 5);
  cfg.norm = norm;
  cfg.positions = positions;
  cfg.rope_theta = 100.f;
  cfg.tie_embeddings = tied;
  cfg.moe_every = 2;
  cfg.dense_hidden = 12;
  cfg.dense_activation = tied ? Activation::GELU : Activation::SwiGLU;
  // O(1) weights: activations, logits and gradients well above float32 noise (at 0.02 most
  // gradients would be ~1e-3 and the comparison vacuous).
  cfg.init_std = 0.5f;
  cfg.moe = moe_test_config(0, 4, 2, 6, shared_experts > 0 ? Activation::SwiGLU : Activation::GELU);
  cfg.moe.capacity_factor = 0.0;  // dropless
  cfg.moe.eval_capacity_factor = 0.0;
  // Coefficients well above the usual 0.01 / 0.001 so the aux and z-loss gradients are visible.
  cfg.moe.aux_loss_coeff = 0.1f;
  cfg.moe.z_loss_coeff = 0.01f;
  cfg.moe.shared_experts = shared_experts;
  cfg.moe.shared_expert_hidden = 3;
  return cfg;
}

std::string describe(const TransformerConfig& cfg) {
  return detail::concat(cfg.positions == PositionKind::Rotary ? "rotary" : "learned",
                        cfg.tie_embeddings ? " tied" : " untied", " shared=", cfg.moe.shared_experts,
                        cfg.norm == NormKind::RMSNorm ? " rmsnorm" : " layernorm");
}

// Tokens of B sequences; every 7th target is -1 (ignored).
void make_batch(Tensor& inputs, Tensor& targets, int64_t B, int64_t S, int64_t V, const std::string& name) {
  inputs = Tensor::empty({B * S}, DType::I32);
  targets = Tensor::empty({B * S}, DType::I32);
  const uint64_t stream = stream_id(kSeed, name);
  for (int64_t n = 0; n < B * S; ++n) {
    inputs.i32()[n] = static_cast<int32_t>(mix64(stream ^ (2 * n)) % V);
    targets.i32()[n] = n % 7 == 3 ? -1 : static_cast<int32_t>(mix64(stream ^ (2 * n + 1)) % V);
  }
}

// Mean cross-entropy of the model's logits in double (the float32 return value of forward rounds it).
double cross_entropy_in_double(const Tensor& logits, const Tensor& targets) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  double sum = 0.0;
  int64_t counted = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int32_t t = targets.i32()[n];
    if (t < 0) continue;
    const float* row = logits.f32() + n * V;
    double m = row[0];
    for (int64_t c = 1; c < V; ++c) m = std::max(m, static_cast<double>(row[c]));
    double s = 0.0;
    for (int64_t c = 0; c < V; ++c) s += std::exp(row[c] - m);
    sum += std::log(s) + m - row[t];
    ++counted;
  }
  return sum / static_cast<double>(counted);
}

// The whole model in float32 with O(0.5) weights, loss L = CE + aux + z summed in double (|L| ~ 3).
// Here truncation dominates at the usual h = 1e-2: the first layers' norm gains and the learned
// positions pass through two layers of norms, softmaxes and a sharp attention, and their error
// (h^2 |f'''| / 6) measured up to 7x the allowance below, shrinking as h^2. With h = 1e-3 it falls
// ~100x, while rounding noise (~4e-7 in L, from float32 logits) grows to ~2e-4 after dividing by 2h.
// Allowed: 5e-4 absolute + 5e-3 relative, ~3.5x the worst error measured over the four models; the
// gradients are O(0.02 .. 1), and dropping one path (the tied head's share of the embedding
// gradient, the inverse rotation in the attention backward) measured 25x .. 700x the allowance.
constexpr FdTolerance kModelTol{1e-3f, 5e-4, 5e-3};

// Elements checked per parameter: all of a small one, else a sample from its whole range.
constexpr int64_t kModelSample = 16;

// positions: documents packed into each sequence (core/ops.h), or null.
void run_model_fd(const TransformerConfig& cfg, const Tensor* positions = nullptr) {
  SCOPED_TRACE(describe(cfg) + (positions != nullptr ? " documents" : ""));
  const int64_t B = 2, S = cfg.seq_len;
  TransformerLM model(cfg, kSeed);
  ParameterRegistry registry;
  model.register_parameters(registry);
  registry.flatten_gradients();
  EXPECT_EQ(registry.numel(), model.total_params());
  Tensor inputs, targets;
  make_batch(inputs, targets, B, S, cfg.vocab_size, "fd.batch");

  registry.zero_grads();
  const float ce = model.forward(inputs, targets, /*training=*/true, positions);
  EXPECT_NEAR(ce, cross_entropy_in_double(model.logits(), targets), 1e-5 * ce);
  EXPECT_GT(model.aux_loss(), 0.0);
  EXPECT_GT(model.z_loss(), 0.0);
  model.backward();

  // The routing choices of every MoE layer make L piecewise: they are the signature.
  auto eval = [&] {
    FdPoint point;
    model.forward(inputs, targets, /*training=*/true, positions);
    point.loss = cross_entropy_in_double(model.logits(), targets) + model.aux_loss() + model.z_loss();
    for (MoELayer* layer : model.moe_layers()) {
      const std::vector<int32_t> e = ints_of(layer->router_output().expert);
      point.signature.insert(point.signature.end(), e.begin(), e.end());
    }
    return point;
  };
  const FdPoint base = eval();
  FdTally total;
  for (Parameter& p : registry.all()) {
    const FdTally tally = expect_piecewise_gradient(p.name, p.value, p.grad, eval, base, kModelTol,
                                                    sample_elements(p.value, kModelSample, p.name));
    // Every parameter must matter, or its check proves nothing.
    EXPECT_GT(tally.max_abs_fd, 10 * kModelTol.atol) << p.name << ": the loss barely depends on it";
    total += tally;
  }
  // A step of 1e-2 rarely flips a top-2 choice; many skips would mean the test checks little.
  EXPECT_LT(total.skipped, (total.checked + total.skipped) / 20) << "skipped " << total.skipped;
}

TEST(TransformerLMGradient, RotaryUntiedRMSNormWithoutSharedExpert) {
  run_model_fd(tiny_config(PositionKind::Rotary, false, 0, NormKind::RMSNorm));
}
TEST(TransformerLMGradient, LearnedTiedLayerNormWithSharedExpert) {
  run_model_fd(tiny_config(PositionKind::Learned, true, 1, NormKind::LayerNorm));
}
TEST(TransformerLMGradient, RotaryTiedLayerNormWithTwoSharedExperts) {
  run_model_fd(tiny_config(PositionKind::Rotary, true, 2, NormKind::LayerNorm));
}
TEST(TransformerLMGradient, LearnedUntiedRMSNormWithSharedExpert) {
  run_model_fd(tiny_config(PositionKind::Learned, false, 1, NormKind::RMSNorm));
}
TEST(TransformerLMGradient, GroupedQueryAttentionUntiedRMSNorm) {  // Mixtral's shape: 2 query heads per kv head
  TransformerConfig cfg = tiny_config(PositionKind::Rotary, false, 0, NormKind::RMSNorm);
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  run_model_fd(cfg);
}
// Two sequences of S = 5 holding documents of 2 + 3 and 1 + 4 tokens.
TEST(TransformerLMGradient, DocumentMaskWithRotaryAndWithLearnedPositions) {
  const Tensor positions = Tensor::from_ints({10}, {0, 1, 0, 1, 2, 0, 0, 1, 2, 3});
  run_model_fd(tiny_config(PositionKind::Rotary, false, 1, NormKind::RMSNorm), &positions);
  run_model_fd(tiny_config(PositionKind::Learned, false, 0, NormKind::LayerNorm), &positions);
}

// A document packed after another gives the same logits as the same document at the start of a
// sequence: its tokens see only their own document (the mask) and count positions from its first
// token (rotary or learned). Sequence 0 = [A (5 tokens) | D (7)], sequence 1 = [D (7) | C (5)].
// Without the positions, D after A differs: the check is not vacuous.
TEST(TransformerLM, PackedDocumentGivesTheLogitsOfTheDocumentAlone) {
  for (PositionKind pos : {PositionKind::Rotary, PositionKind::Learned}) {
    TransformerConfig cfg = tiny_config(pos, false, 1, NormKind::RMSNorm);
    cfg.seq_len = 12;
    SCOPED_TRACE(describe(cfg));
    TransformerLM model(cfg, kSeed);
    Tensor inputs, targets;
    make_batch(inputs, targets, 2, 12, cfg.vocab_size, "packed.batch");
    for (int64_t s = 0; s < 7; ++s) inputs.i32()[12 + s] = inputs.i32()[5 + s];  // D in both sequences
    const Tensor positions = Tensor::from_ints({24}, {0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6,
                                                      0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4});
    const int64_t V = cfg.vocab_size;
    auto worst_difference = [&] {  // D's logits after A against D's at the start of sequence 1
      double worst = 0.0;
      for (int64_t s = 0; s < 7; ++s)
        for (int64_t c = 0; c < V; ++c)
          worst = std::max(worst, std::fabs(static_cast<double>(model.logits().f32()[(5 + s) * V + c]) -
                                            model.logits().f32()[(12 + s) * V + c]));
      return worst;
    };
    model.forward(inputs, targets, true, &positions);
    // As in ChangingALaterTokenLeavesEarlierLogitsUnchanged: float32 rounding of regrouped GEMM rows and
    // of masked keys' zero terms, not identical bits.
    EXPECT_LT(worst_difference(), 1e-5);
    model.forward(inputs, targets, true);
    EXPECT_GT(worst_difference(), 1e-2) << "D's logits after A do not depend on A even without the mask";
  }
}

TEST(TransformerLM, RegistersEveryParameterByName) {
  TransformerConfig cfg = tiny_config(PositionKind::Learned, false, 1, NormKind::LayerNorm);
  TransformerLM model(cfg, kSeed);
  ParameterRegistry registry;
  model.register_parameters(registry);
  const std::vector<std::string> expected = {
      "embedding", "positions",
      "layers.0.norm1.g", "layers.0.norm1.b", "layers.0.attn.w_qkv", "layers.0.attn.w_out",
      "layers.0.norm2.g", "layers.0.norm2.b", "layers.0.ffn.w_in", "layers.0.ffn.w_out",
      "layers.1.norm1.g", "layers.1.norm1.b", "layers.1.attn.w_qkv", "layers.1.attn.w_out",
      "layers.1.norm2.g", "layers.1.norm2.b", "layers.1.moe.w_gate", "layers.1.moe.w_in", "layers.1.moe.w_out",
      "layers.1.shared.w_in", "layers.1.shared.w_out", "final_norm.g", "final_norm.b", "head"};
  std::vector<std::string> names;
  for (const Parameter& p : registry.all()) names.push_back(p.name);
  EXPECT_EQ(names, expected);
  for (const Parameter& p : registry.all()) {
    const bool is_norm = p.name.find("norm") != std::string::npos;
    EXPECT_EQ(p.weight_decay, !is_norm) << p.name;
    const bool is_expert = p.name == "layers.1.moe.w_in" || p.name == "layers.1.moe.w_out";
    EXPECT_EQ(p.kind, is_expert ? ParamKind::Expert : ParamKind::Dense) << p.name;
  }
  EXPECT_EQ(model.moe_layer(0), nullptr);
  ASSERT_NE(model.moe_layer(1), nullptr);
  EXPECT_EQ(model.moe_layers().size(), 1u);
  EXPECT_EQ(registry.get("layers.1.shared.w_in").value.shape(), (Shape{8, 2 * 3}));  // SwiGLU, hidden 3

  // Tied: no head; rotary: no positions.
  ParameterRegistry tied_registry;
  TransformerLM tied(tiny_config(PositionKind::Rotary, true, 0, NormKind::RMSNorm), kSeed);
  tied.register_parameters(tied_registry);
  EXPECT_THROW(tied_registry.get("head"), InvalidArgument);
  EXPECT_THROW(tied_registry.get("positions"), InvalidArgument);
  EXPECT_THROW(tied_registry.get("layers.1.shared.w_in"), InvalidArgument);
  EXPECT_EQ(tied_registry.numel(), tied.total_params());
}

// flatten_gradients moves every gradient into one buffer per kind, in registration order, without
// changing a value, and the layers' backward then accumulates straight into those buffers.
TEST(ParameterRegistry, FlattenedGradientsAreViewsOfOneBufferPerKind) {
  const TransformerConfig cfg = tiny_config(PositionKind::Learned, false, 1, NormKind::LayerNorm);
  TransformerLM model(cfg, kSeed);
  ParameterRegistry registry;
  model.register_parameters(registry);
  Tensor inputs, targets;
  make_batch(inputs, targets, 2, cfg.seq_len, cfg.vocab_size, "flatten.batch");
  model.forward(inputs, targets, true);
  model.backward();
  std::vector<Tensor> before;
  for (const Parameter& p : registry.all()) before.push_back(p.grad.clone());

  registry.flatten_gradients();
  int64_t at[2] = {0, 0};
  for (size_t i = 0; i < registry.all().size(); ++i) {
    const Parameter& p = registry.all()[i];
    const int kind = static_cast<int>(p.kind);
    const float* flat = registry.gradients(p.kind).f32();
    EXPECT_EQ(p.grad.f32(), flat + at[kind]) << p.name << " is not at its place in its kind's buffer";
    EXPECT_EQ(std::memcmp(p.grad.f32(), before[i].f32(), p.grad.nbytes()), 0) << p.name << " changed";
    at[kind] += p.grad.numel();
  }
  EXPECT_EQ(registry.gradients(ParamKind::Dense).numel(), at[0]);
  EXPECT_EQ(registry.gradients(ParamKind::Expert).numel(), at[1]);
  EXPECT_GT(at[1], 0);
  // The layer's own tensor is the view too.
  EXPECT_EQ(model.moe_layer(1)->grads.w_in.f32(), registry.get("layers.1.moe.w_in").grad.f32());

  // The same batch again, from zeroed buffers: the layers write the same gradients into them.
  registry.zero_grads();
  EXPECT_EQ(sum_of_squares(registry.gradients(ParamKind::Dense)), 0.0);
  model.forward(inputs, targets, true);
  model.backward();
  for (size_t i = 0; i < registry.all().size(); ++i)
    EXPECT_EQ(std::memcmp(registry.all()[i].grad.f32(), before[i].f32(), before[i].nbytes()), 0)
        << registry.all()[i].name;

  Tensor late = Tensor::zeros({2});
  EXPECT_CONTAINS(error_message([&] { registry.add("late", late, late, ParamKind::Dense); }),
                  "parameter 'late' registered after flatten_gradients");
  EXPECT_CONTAINS(error_message([&] { registry.flatten_gradients(); }), "flatten_gradients called twice");
}

// The names are the checkpoint format: these literals must never change.
TEST(ParameterNames, BuildAndTakeApartLayerTensorNames) {
  EXPECT_EQ(names::layer_part(12, names::kMoE), "layers.12.moe");
  EXPECT_EQ(names::tensor_name(names::kFinalNorm, names::kGain), "final_norm.g");
  EXPECT_EQ(names::layer_tensor(3, names::kMoE, names::kSelectionBias), "layers.3.moe.selection_bias");
  EXPECT_EQ(names::layer_tensor(0, names::kFfn, names::kWIn), "layers.0.ffn.w_in");

  names::LayerTensorName n;
  ASSERT_TRUE(names::parse_layer_tensor("layers.10.moe.w_gate", &n));
  EXPECT_EQ(n.layer, 10);
  EXPECT_EQ(n.part, "moe");
  EXPECT_EQ(n.leaf, "w_gate");
  for (const char* other : {"embedding", "final_norm.g", "adamw.m.layers.0.moe.w_in", "layers.x.moe.w_in",
                            "layers.-1.moe.w_in", "layers.1.moe", "layers.1.moe.", "layers.1..w_in", "layers.1"})
    EXPECT_FALSE(names::parse_layer_tensor(other, &n)) << other;
}

TEST(TransformerLM, ParameterAndFlopCountsFollowTheirFormulas) {
  TransformerConfig cfg = transformer_test_config(100, 16, 4, 2, 32);
  cfg.moe_every = 2;
  cfg.dense_hidden = 64;
  cfg.dense_activation = Activation::GELU;
  cfg.moe = moe_test_config(0, 8, 2, 24, Activation::SwiGLU);
  cfg.moe.shared_experts = 1;
  cfg.moe.shared_expert_hidden = 10;
  for (bool tied : {false, true})
    for (PositionKind pos : {PositionKind::Rotary, PositionKind::Learned}) {
      cfg.tie_embeddings = tied;
      cfg.positions = pos;
      cfg.n_kv_heads = tied ? 1 : 0;  // 2 heads of 8 sharing 1 key/value head: w_qkv (16, 32)
      TransformerLM model(cfg, kSeed);
      ParameterRegistry registry;
      model.register_parameters(registry);
      const int64_t d = 16, V = 100, S = 32;
      const int64_t expert = d * 48 + 24 * d, shared = d * 20 + 10 * d, dense = d * 64 + 64 * d;
      const int64_t per_layer = 2 * d + (tied ? 3 * d * d : 4 * d * d);
      const int64_t tables = V * d + (pos == PositionKind::Learned ? S * d : 0) + (tied ? 0 : d * V);
      const int64_t common = tables + 4 * per_layer + 2 * dense + 2 * (d * 8 + shared) + d;
      EXPECT_EQ(model.total_params(), common + 2 * 8 * expert);
      EXPECT_EQ(registry.numel(), model.total_params());
      EXPECT_EQ(model.active_params_per_token(), common + 2 * 2 * expert);
      // The same from the config alone (moe.d_model left 0), as moe-ckpt counts without building a model.
      EXPECT_EQ(cfg.total_params(), model.total_params());
      EXPECT_EQ(cfg.active_params_per_token(), model.active_params_per_token());
      // 6 N + 12 L d S, N without the tables read by lookup (the embedding counts once, as the head).
      const int64_t matmul_params =
          model.active_params_per_token() - (tied ? 0 : V * d) - (pos == PositionKind::Learned ? S * d : 0);
      EXPECT_DOUBLE_EQ(model.flops_per_token(), 6.0 * matmul_params + 12.0 * 4 * d * S);
    }
}

TEST(TransformerLM, SameSeedSameWeightsAndOutputProjectionsScaled) {
  TransformerConfig cfg = tiny_config(PositionKind::Rotary, false, 1, NormKind::RMSNorm);
  cfg.d_model = 64;
  cfg.n_heads = 4;
  cfg.n_layers = 8;
  cfg.moe_every = 4;
  cfg.moe.expert_hidden = 64;
  cfg.moe.shared_expert_hidden = 64;
  cfg.dense_hidden = 64;
  cfg.init_std = 0.02f;
  TransformerLM a(cfg, 7), b(cfg, 7), c(cfg, 8);
  ParameterRegistry ra, rb, rc;
  a.register_parameters(ra);
  b.register_parameters(rb);
  c.register_parameters(rc);
  for (size_t i = 0; i < ra.all().size(); ++i) {
    const Parameter& pa = ra.all()[i];
    const Tensor& vb = rb.all()[i].value;
    EXPECT_EQ(std::memcmp(pa.value.f32(), vb.f32(), pa.value.numel() * sizeof(float)), 0) << pa.name;
    if (pa.name.find("norm") != std::string::npos) continue;  // gains are 1 whatever the seed
    EXPECT_NE(std::memcmp(pa.value.f32(), rc.all()[i].value.f32(), pa.value.numel() * sizeof(float)), 0) << pa.name;
    // Standard deviations: init_std, and init_std / sqrt(2 L) = init_std / 4 for output projections.
    double sum_sq = 0.0;
    for (int64_t j = 0; j < pa.value.numel(); ++j) sum_sq += static_cast<double>(pa.value.f32()[j]) * pa.value.f32()[j];
    const double std = std::sqrt(sum_sq / pa.value.numel());
    const bool output = pa.name.find("w_out") != std::string::npos;
    const double expected = output ? 0.02 / 4 : 0.02;
    // >= 4096 samples: the estimate is within ~3 / sqrt(2 * 4096) = 3.3% with overwhelming probability.
    if (pa.value.numel() >= 4096) {
      EXPECT_NEAR(std / expected, 1.0, 0.05) << pa.name;
    }
  }
}

TEST(TransformerLM, ChangingALaterTokenLeavesEarlierLogitsUnchanged) {
  for (PositionKind pos : {PositionKind::Rotary, PositionKind::Learned}) {
    const TransformerConfig cfg = tiny_config(pos, pos == PositionKind::Learned, 1, NormKind::RMSNorm);
    SCOPED_TRACE(describe(cfg));
    TransformerLM model(cfg, kSeed);
    Tensor inputs, targets;
    make_batch(inputs, targets, 2, cfg.seq_len, cfg.vocab_size, "causal.batch");
    model.forward(inputs, targets, true);
    const Tensor before = model.logits().clone();
    const int64_t S = cfg.seq_len, V = cfg.vocab_size, changed = S + 3;  // sequence 1, position 3
    inputs.i32()[changed] = (inputs.i32()[changed] + 5) % static_cast<int32_t>(V);
    model.forward(inputs, targets, true);
    // Dropless routing treats tokens independently; the experts' GEMMs may regroup rows, so allow
    // float32 rounding rather than demanding identical bits.
    for (int64_t n = 0; n < 2 * S; ++n) {
      double diff = 0.0;
      for (int64_t c = 0; c < V; ++c)
        diff = std::max(diff, std::fabs(static_cast<double>(model.logits().f32()[n * V + c]) - before.f32()[n * V + c]));
      if (n < changed) {
        EXPECT_LT(diff, 1e-5) << "row " << n << " depends on the later token " << changed;
      } else if (n == changed) {
        EXPECT_GT(diff, 1e-3) << "the changed token's own logits did not change";
      }
    }
  }
}

// Decoding with a KV cache gives, for every position, the logits of the full forward over the sequence:
// a prefill of 3 tokens, one step of 2, then one token at a time, with rotary and with learned positions,
// through a dense layer and a dropless MoE layer (which treats tokens independently). The arithmetic is the
// same float32 math in another order: the full attention is blocked with fast_exp (2e-7 relative), the
// cached one direct with std::exp, each within 5e-6 of the exact attention (CausalAttention's
// kForwardTol), and the products see other row counts. With these O(1) weights (init_std 0.5) the two
// layers, norms and head carry such relative errors of the activations to the logits amplified by at most
// ~10 (measured: below 2e-6 relative), so 1e-4 (1 + |logit|) bounds it; reading a wrong position or key
// moves logits by O(0.1 .. 1).
TEST(TransformerLM, CachedDecodeGivesTheLogitsOfTheFullForward) {
  for (PositionKind pos : {PositionKind::Rotary, PositionKind::Learned}) {
    TransformerConfig cfg = tiny_config(pos, pos == PositionKind::Learned, 1, NormKind::RMSNorm);
    cfg.seq_len = 9;
    if (pos == PositionKind::Rotary) cfg.n_heads = 4, cfg.n_kv_heads = 2;  // the cache holds grouped heads too
    SCOPED_TRACE(describe(cfg));
    TransformerLM model(cfg, kSeed);
    const int64_t B = 2, S = cfg.seq_len, V = cfg.vocab_size;
    Tensor inputs, targets;
    make_batch(inputs, targets, B, S, V, "cached.batch");
    model.forward(inputs, targets, false);
    const Tensor full = model.logits().clone();

    KVCache cache = model.make_kv_cache(B, S);
    double worst = 0;
    for (const int64_t n : {3, 2, 1, 1, 1, 1}) {
      const int64_t past = cache.length;
      Tensor tokens = Tensor::empty({B * n}, DType::I32);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n; ++i) tokens.i32()[b * n + i] = inputs.i32()[b * S + past + i];
      const Tensor& logits = model.forward_cached(tokens, cache);
      ASSERT_EQ(cache.length, past + n);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = 0; c < V; ++c) {
            const float ref = full.f32()[(b * S + past + i) * V + c];
            const double err = std::fabs(logits.f32()[(b * n + i) * V + c] - ref) / (1 + std::fabs(ref));
            ASSERT_LE(err, 1e-4) << "sequence " << b << ", position " << past + i << ", token " << c;
            worst = std::max(worst, err);
          }
    }
    ASSERT_EQ(cache.length, S);
    if (std::getenv("MOE_TEST_VERBOSE") != nullptr) std::printf("%s: worst %.3g\n", describe(cfg).c_str(), worst);

    // Past the cache's capacity; with learned positions, past seq_len as well.
    const Tensor one = Tensor::from_ints({B}, {1, 2});
    EXPECT_CONTAINS(error_message([&] { model.forward_cached(one, cache); }), "9 cached + 1 new tokens exceed the cache's capacity of 9");
    if (pos == PositionKind::Learned) {
      KVCache longer = model.make_kv_cache(B, S + 1);
      longer.length = S;
      EXPECT_CONTAINS(error_message([&] { model.forward_cached(one, longer); }), "exceed seq_len = 9",
                      "learned position table");
    }
    EXPECT_CONTAINS(error_message([&] { model.forward_cached(Tensor::from_ints({3}, {1, 2, 3}), cache); }),
                    "3 tokens are not n >= 1 new tokens for each of the cache's 2 sequences");
  }
}

TEST(TransformerLM, ReusedBuffersMatchAFreshModelAcrossBatchSizes) {
  const TransformerConfig cfg = tiny_config(PositionKind::Learned, true, 1, NormKind::LayerNorm);
  TransformerLM reused(cfg, kSeed);
  ParameterRegistry reused_registry;
  reused.register_parameters(reused_registry);
  reused_registry.flatten_gradients();
  int call = 0;
  for (int64_t B : {3, 1, 2, 3}) {
    SCOPED_TRACE(detail::concat("call ", call, " B=", B));
    Tensor inputs, targets;
    make_batch(inputs, targets, B, cfg.seq_len, cfg.vocab_size, detail::concat("reuse", call++));
    TransformerLM fresh(cfg, kSeed);
    ParameterRegistry fresh_registry;
    fresh.register_parameters(fresh_registry);
    fresh_registry.flatten_gradients();
    const float loss_fresh = fresh.forward(inputs, targets, true);
    fresh.backward();
    reused_registry.zero_grads();
    const float loss_reused = reused.forward(inputs, targets, true);
    reused.backward();
    EXPECT_NEAR(loss_reused, loss_fresh, 1e-6 * loss_fresh);
    for (size_t i = 0; i < fresh_registry.all().size(); ++i) {
      const Parameter& f = fresh_registry.all()[i];
      const Tensor& g = reused_registry.all()[i].grad;
      const double scale = max_abs(f.grad) + 1e-30;
      for (int64_t j = 0; j < g.numel(); ++j)
        ASSERT_NEAR(g.f32()[j], f.grad.f32()[j], 1e-5 * scale) << f.name << "[" << j << "]";
    }
  }
}

// Recomputation redoes the same operations on the same inputs: losses and every gradient are the
// same bits as when everything is kept, over two steps (the second reading buffers the first left).
TEST(TransformerLM, RecomputationGivesTheSameBits) {
  TransformerConfig kept_cfg = tiny_config(PositionKind::Rotary, false, 1, NormKind::RMSNorm);
  kept_cfg.moe_every = 1;  // two layers of each kind: the second overwrites the shared scratch
  for (Recompute mode : {Recompute::Experts, Recompute::Attention, Recompute::All}) {
    SCOPED_TRACE(static_cast<int>(mode));
    TransformerConfig cfg = kept_cfg;
    cfg.recompute = mode;
    TransformerLM kept(kept_cfg, kSeed), recomputing(cfg, kSeed);
    ParameterRegistry kept_registry, recomputing_registry;
    kept.register_parameters(kept_registry);
    recomputing.register_parameters(recomputing_registry);
    for (int call = 0; call < 2; ++call) {
      Tensor inputs, targets;
      make_batch(inputs, targets, 2, cfg.seq_len, cfg.vocab_size, detail::concat("recompute", call));
      kept_registry.zero_grads();
      recomputing_registry.zero_grads();
      EXPECT_EQ(recomputing.forward(inputs, targets, true), kept.forward(inputs, targets, true));
      kept.backward();
      recomputing.backward();
      for (size_t i = 0; i < kept_registry.all().size(); ++i) {
        const Tensor& g = recomputing_registry.all()[i].grad;
        EXPECT_EQ(floats_of(g), floats_of(kept_registry.all()[i].grad)) << kept_registry.all()[i].name;
      }
    }
  }
}

TEST(TransformerLM, EvaluationUsesTheEvalCapacity) {
  TransformerConfig cfg = tiny_config(PositionKind::Rotary, false, 0, NormKind::RMSNorm);
  cfg.moe.capacity_factor = 0.5;
  cfg.moe.eval_capacity_factor = 2.0;
  cfg.moe.min_capacity = 1;
  TransformerLM model(cfg, kSeed);
  Tensor inputs, targets;
  make_batch(inputs, targets, 4, cfg.seq_len, cfg.vocab_size, "eval.batch");
  const int64_t T = inputs.dim(0);
  model.forward(inputs, targets, /*training=*/true);
  EXPECT_EQ(model.moe_layer(1)->stats().capacity, expert_capacity(0.5, T, 2, 4, 1));
  EXPECT_GT(model.moe_layer(1)->stats().dropped_total, 0);
  model.forward(inputs, targets, /*training=*/false);
  EXPECT_EQ(model.moe_layer(1)->stats().capacity, expert_capacity(2.0, T, 2, 4, 1));
}

TEST(TransformerLM, GradientDescentLowersTheLossOnAFixedBatch) {
  TransformerConfig cfg = tiny_config(PositionKind::Rotary, true, 1, NormKind::RMSNorm);
  cfg.init_std = 0.1f;
  TransformerLM model(cfg, kSeed);
  ParameterRegistry registry;
  model.register_parameters(registry);
  registry.flatten_gradients();
  Tensor inputs, targets;
  make_batch(inputs, targets, 4, cfg.seq_len, cfg.vocab_size, "sgd.batch");
  float first = 0.f, last = 0.f;
  for (int step = 0; step < 60; ++step) {
    registry.zero_grads();
    last = model.forward(inputs, targets, true);
    if (step == 0) first = last;
    model.backward();
    for (Parameter& p : registry.all()) add_scaled(p.value, p.grad, -0.3f);
  }
  EXPECT_LT(last, 0.5f * first) << "first " << first << ", last " << last;
}

TEST(TransformerLM, BadConfigAndInputsNameTheProblem) {
  auto with = [](const std::function<void(TransformerConfig&)>& edit) {
    TransformerConfig cfg = tiny_config(PositionKind::Rotary, false, 0, NormKind::RMSNorm);
    edit(cfg);
    return cfg;
  };
  EXPECT_CONTAINS(error_message([&] { TransformerLM(with([](auto& c) { c.n_heads = 3; }), 1); }), "n_heads = 3");
  EXPECT_CONTAINS(error_message([&] { TransformerLM(with([](auto& c) { c.n_heads = 8; }), 1); }), "even head dim", "rotary");
  EXPECT_CONTAINS(error_message([&] { TransformerLM(with([](auto& c) { c.dense_hidden = 0; }), 1); }),
                  "dense_hidden = 0");
  EXPECT_CONTAINS(error_message([&] { TransformerLM(with([](auto& c) { c.moe.top_k = 5; }), 1); }), "top_k = 5");
  EXPECT_CONTAINS(error_message([&] { TransformerLM(with([](auto& c) { c.vocab_size = 0; }), 1); }), "vocab_size = 0");
  // Learned positions accept an odd head_dim; no MoE layers need no MoE settings.
  TransformerLM(with([](auto& c) {
                  c.n_heads = 8;
                  c.positions = PositionKind::Learned;
                }),
                1);
  TransformerLM(with([](auto& c) {
                  c.moe_every = 3;  // of 2 layers: none is MoE
                  c.moe.num_experts = 0;
                }),
                1);
  TransformerLM model(tiny_config(PositionKind::Rotary, false, 0, NormKind::RMSNorm), 1);
  Tensor inputs = Tensor::zeros({7}, DType::I32), targets = Tensor::zeros({7}, DType::I32);
  EXPECT_CONTAINS(error_message([&] { model.forward(inputs, targets, true); }), "7 tokens", "seq_len = 5");
  Tensor ok_inputs = Tensor::zeros({10}, DType::I32), bad_targets = Tensor::zeros({10});
  EXPECT_CONTAINS(error_message([&] { model.forward(ok_inputs, bad_targets, true); }), "targets", "int32");
  ok_inputs.i32()[4] = 11;
  Tensor ok_targets = Tensor::zeros({10}, DType::I32);
  EXPECT_CONTAINS(error_message([&] { model.forward(ok_inputs, ok_targets, true); }), "ids[4] = 11");
  EXPECT_CONTAINS(error_message([&] { model.backward(); }), "before forward");
}


// ---------------------------------------------------------------------------------------------
// bf16 mixed precision against float32
// ---------------------------------------------------------------------------------------------

// bfloat16 keeps 8 significant bits: rounding moves a value by at most u = 2^-8 relative, ~u/sqrt(3)
// RMS for values spread over binades. In bf16 a layer's products read rounded copies of their inputs
// (activations, weights, output gradients) and sum exactly in float32; everything else is float32 as
// in fp32 (~1e-7). Each rounding moves every term of the sums it feeds by <= u relative, and with
// random signs n roundings upstream of an output give a relative RMS error of about sqrt(n/3) u.
// AttentionLayer and DenseFFN have n <= 6 (dx: dy, W_out, the forward's x and W_in through the
// activation's or the softmax's derivative, the rounded dpre or dqkv, W_in): about 1.4 u (measured
// 0.8-1.6 u). Allowed: 4 u; the lower bound u / 16 shows bfloat16 was used (float32 products agree to
// ~1e-6). A stale weight copy or a wrong operand is off by O(1).
constexpr double kBf16Unit = 1.0 / 256;
constexpr double kBf16LayerTol = 4 * kBf16Unit;

void expect_bf16_close(const char* name, const Tensor& bf16, const Tensor& fp32, double tol) {
  const double error = relative_rms_error(bf16, fp32);
  EXPECT_LT(error, tol) << name;
  EXPECT_GT(error, kBf16Unit / 16) << name << ": no bfloat16 rounding visible";
  if (std::getenv("MOE_TEST_VERBOSE")) std::printf("%s: relative RMS error %.2f u\n", name, error / kBf16Unit);
}

// A layer in both precisions (built from the same seed and name: the same weights) on the same x and
// dy, twice, the float32 masters changed in between as an optimizer step would: the bf16 layer's
// weight copies must follow them. `params` names the weights (AttentionWeights or FFNWeights members).
// At init_std 0.2 and d = 32 the attention's scores are O(1) (RMS ~1.3), so the softmax passes a
// score's rounding error on about unamplified.
template <typename Layer, typename Weights>
void expect_layer_bf16_close(Layer& fp32, Layer& bf16, int64_t N, int64_t d,
                             const std::vector<std::pair<const char*, Tensor Weights::*>>& params) {
  const Tensor x = normal_tensor({N, d}, 1.f, kSeed, "bf16.x"), dy = normal_tensor({N, d}, 1.f, kSeed, "bf16.dy");
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE(detail::concat("step ", step));
    Tensor y = Tensor::empty({N, d}), y16 = Tensor::empty({N, d});
    Tensor dx = Tensor::zeros({N, d}), dx16 = Tensor::zeros({N, d});
    for (const auto& [name, w] : params) {
      (fp32.grads.*w).zero();
      (bf16.grads.*w).zero();
    }
    fp32.forward(y, x);
    bf16.forward(y16, x);
    fp32.backward(dx, dy);
    bf16.backward(dx16, dy);
    expect_bf16_close("y", y16, y, kBf16LayerTol);
    expect_bf16_close("dx", dx16, dx, kBf16LayerTol);
    for (const auto& [name, w] : params) {
      expect_bf16_close(name, bf16.grads.*w, fp32.grads.*w, kBf16LayerTol);
      // Negated (exactly; the attention's scores, q k^T, keep their size): a stale copy is off by O(1).
      scale_in_place(fp32.weights.*w, -1.f);
      (bf16.weights.*w).copy_from(fp32.weights.*w);
    }
  }
}

TEST(AttentionLayerBf16, MatchesTheFloat32LayerWithinBf16Rounding) {
  for (bool rotary : {false, true}) {
    SCOPED_TRACE(rotary ? "rotary" : "no positions");
    AttentionConfig cfg = small_attention(rotary);
    cfg.d_model = 32;
    cfg.n_heads = 4;
    cfg.seq_len = 12;
    cfg.init_std = cfg.out_init_std = 0.2f;  // O(1) projections and scores for d = 32
    AttentionConfig cfg16 = cfg;
    cfg16.precision = Precision::BF16;
    AttentionLayer fp32(cfg, kSeed, "attn"), bf16(cfg16, kSeed, "attn");
    expect_layer_bf16_close<AttentionLayer, AttentionWeights>(
        fp32, bf16, 3 * cfg.seq_len, cfg.d_model,
        {{"grad w_qkv", &AttentionWeights::w_qkv}, {"grad w_out", &AttentionWeights::w_out}});
  }
}

// GELU and SwiGLU: ReLU's derivative jumps at 0, and a pre-activation within rounding of 0 changes side,
// moving those elements of dx and grad w_in by O(1); its path through the layer is the same code.
TEST(DenseFFNBf16, MatchesTheFloat32LayerWithinBf16Rounding) {
  for (Activation act : {Activation::GELU, Activation::SwiGLU}) {
    SCOPED_TRACE(to_string(act));
    DenseFFNConfig cfg;
    cfg.d_model = 32;
    cfg.hidden = 48;
    cfg.activation = act;
    cfg.init_std = cfg.out_init_std = 0.2f;  // O(1) outputs for d = 32
    DenseFFNConfig cfg16 = cfg;
    cfg16.precision = Precision::BF16;
    DenseFFN fp32(cfg, kSeed, "ffn"), bf16(cfg16, kSeed, "ffn");
    expect_layer_bf16_close<DenseFFN, FFNWeights>(
        fp32, bf16, 40, cfg.d_model, {{"grad w_in", &FFNWeights::w_in}, {"grad w_out", &FFNWeights::w_out}});
  }
}
// The whole model, dense layers only (moe_every = 3 > n_layers: the MoE layer's bf16 has its own tests,
// and a router choice flipped by rounding would move its token by O(1)), untied with rotary positions
// and tied with learned ones: loss, logits and every parameter's gradient. A path through the model
// meets more roundings than one layer's: up to 4 per attention or FFN on the way to the logits and 6 on
// the way back, plus the head's 2 each way, n <= 2 (4 + 4) + 2 + 2 + 2 (6 + 6) = 44 for the first
// layer's weights, about sqrt(44/3) u ~ 3.8 u RMS (measured 1.4-4.9 u; MOE_TEST_VERBOSE=1 prints them).
// Allowed: 12 u.
constexpr double kBf16ModelTol = 12 * kBf16Unit;

TEST(TransformerLMBf16, MatchesTheFloat32ModelWithinBf16Rounding) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied, learned positions" : "untied, rotary");
    TransformerConfig cfg = transformer_test_config(50, 32, 2, 4, 12);
    cfg.moe_every = 3;
    cfg.dense_hidden = 48;
    cfg.tie_embeddings = tied;
    cfg.positions = tied ? PositionKind::Learned : PositionKind::Rotary;
    cfg.init_std = 0.2f;  // O(1) activations and logits for d = 32, as in the layer tests
    TransformerConfig cfg16 = cfg;
    cfg16.precision = Precision::BF16;
    ASSERT_EQ(cfg.num_moe_layers(), 0);
    TransformerLM fp32(cfg, kSeed), bf16(cfg16, kSeed);
    ParameterRegistry r32, r16;
    fp32.register_parameters(r32);
    bf16.register_parameters(r16);
    Tensor inputs, targets;
    make_batch(inputs, targets, 3, cfg.seq_len, cfg.vocab_size, "bf16.batch");
    const float loss = fp32.forward(inputs, targets, true), loss16 = bf16.forward(inputs, targets, true);
    EXPECT_NEAR(loss16, loss, kBf16ModelTol * loss);
    expect_bf16_close("logits", bf16.logits(), fp32.logits(), kBf16ModelTol);
    fp32.backward();
    bf16.backward();
    ASSERT_EQ(r16.all().size(), r32.all().size());
    for (size_t i = 0; i < r32.all().size(); ++i)
      expect_bf16_close(r32.all()[i].name.c_str(), r16.all()[i].grad, r32.all()[i].grad, kBf16ModelTol);
  }
}

}  // namespace
}  // namespace moe
