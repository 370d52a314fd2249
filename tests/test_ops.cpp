// Unit tests of core/ops.h and core/optim_ops.h on CPU: every forward against a straightforward reference written here,
// every backward against central finite differences, accumulation (+=), argument checks, the
// no-CUDA stubs (in a build without CUDA); moe::gemm and moe::gemm_bf16 in all transpose combinations
// against a naive loop; the bfloat16 conversions' rounding, and the bfloat16 linear ops against float32.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cfloat>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/bfloat16.h"
#include "core/check.h"
#include "core/cpu/gemm.h"
#include "core/cpu/omp_threshold.h"
#include "core/ops.h"
#include "core/optim_ops.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kUnitRoundoff = FLT_EPSILON / 2;  // u = 2^-24: float32 relative rounding error

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

// Values with |v| in [0.1, 1] and random sign: at least 10 finite-difference steps away from relu's kink.
Tensor random_away_from_zero(const Shape& shape, std::mt19937& rng) {
  Tensor t = random_tensor(shape, rng, 0.1f, 1.f);
  std::bernoulli_distribution negative(0.5);
  for (int64_t i = 0; i < t.numel(); ++i)
    if (negative(rng)) t.f32()[i] = -t.f32()[i];
  return t;
}

// An output tensor filled with NaN: a forward that reads instead of overwriting it shows up as NaN.
Tensor nan_tensor(const Shape& shape) {
  Tensor t = Tensor::empty(shape);
  t.fill(kNaN);
  return t;
}

float at(const Tensor& t, int64_t row, int64_t col) { return t.f32()[row * t.dim(1) + col]; }

// ---- finite differences ----
//
// Step and tolerance for checking float32 backward passes against central differences (test_util.h)
// of a loss computed in double from float32 forward outputs (inputs, weights and r all O(1)):
//  - truncation error of the central difference is h^2/6 |f'''|; |f'''| stays below ~10 for these
//    ops on O(1) inputs (the norms' rstd^3 / C terms are the largest), so with h = 1e-2: <= 1.7e-4;
//  - rounding: each perturbed output carries ~4 u |y| ~ 2.5e-7 of float32 error, over up to ~20
//    outputs that depend on one input: ~1e-6 absolute in L, divided by 2h: ~5e-5;
//  - the float32 analytic gradient itself is off by ~1e-6 relative.
// So the allowed error is 3e-4 absolute + 3e-3 relative (measured worst: ~1e-5, 3% of the allowance),
// while a real bug (a missing term, a wrong sign or factor) moves O(0.1..1) gradients by >= 1%.
constexpr FdTolerance kGradTol{1e-2f, 3e-4, 3e-3};
// The largest |finite difference| of a check must exceed this, or L barely depends on the input.
constexpr double kNotVacuous = 1e-2;

// Zeroes `grads`, runs `backward` twice and checks the second run doubled every gradient: backward
// must add (+=) into its outputs. GEMM with beta = 1 may fold the old value into its FMA chain, so
// allow a few float32 ulps of difference from exactly 2x.
void expect_backward_accumulates(const std::vector<Tensor*>& grads, const std::function<void()>& backward) {
  for (Tensor* g : grads) g->zero();
  backward();
  std::vector<Tensor> once;
  for (Tensor* g : grads) once.push_back(g->clone());
  backward();
  for (size_t k = 0; k < grads.size(); ++k) {
    double max_abs = 0.0;
    for (int64_t i = 0; i < once[k].numel(); ++i) {
      const double expected = 2.0 * once[k].f32()[i];
      max_abs = std::max(max_abs, std::fabs(expected));
      EXPECT_NEAR(grads[k]->f32()[i], expected, 8 * kUnitRoundoff * std::fabs(expected))
          << "gradient " << k << ", element " << i;
    }
    EXPECT_GT(max_abs, 0.0) << "gradient " << k << " is all zero; the check is vacuous";
  }
}

// ---------------------------------------------------------------------------------------------
// The shared checks of test_util.h must be able to fail
// ---------------------------------------------------------------------------------------------

TEST(GradientChecker, RejectsAGradientOffByOnePercent) {
  std::mt19937 rng(1);
  Tensor x = random_tensor({3, 7}, rng, -3.f, 3.f);
  Tensor r = random_tensor({3, 7}, rng);
  Tensor y = Tensor::zeros({3, 7});
  Tensor dx = Tensor::zeros({3, 7});
  gelu_backward(dx, r, x);
  auto loss = [&] {
    gelu_forward(y, x);
    return weighted_sum(y, r);
  };
  EXPECT_TRUE(gradient_matches(check_gradient("dx", x, dx, loss, kGradTol)));
  add_scaled(dx, dx, 0.01f);  // dx *= 1.01
  EXPECT_FALSE(gradient_matches(check_gradient("dx", x, dx, loss, kGradTol)));
  dx.f32()[4] = kNaN;
  const FdTally nan = check_gradient("dx", x, dx, loss, kGradTol);
  EXPECT_GE(nan.failed, 1) << "a NaN gradient must fail";
  EXPECT_CONTAINS(nan.worst_element, "dx[4]: analytic nan");
}

TEST(GradientChecker, SkipsOnlyElementsWhosePerturbationChangesTheSignature) {
  // L = sum |x_i| with the signs as signature: x_1 sits within one step of the kink, so it is
  // skipped; the others are compared against the gradient sign(x_i) (x_3's entry is wrong).
  Tensor x = Tensor::from({4}, {0.5f, 0.004f, -0.7f, 0.3f});
  Tensor grad = Tensor::from({4}, {1.f, 1.f, -1.f, 2.f});
  auto eval = [&] {
    FdPoint point;
    for (int64_t i = 0; i < x.numel(); ++i) {
      point.loss += std::fabs(static_cast<double>(x.f32()[i]));
      point.signature.push_back(x.f32()[i] > 0.f);
    }
    return point;
  };
  const FdTally tally = check_gradient("x", x, grad, eval, eval(), kGradTol);
  EXPECT_EQ(tally.checked, 3);
  EXPECT_EQ(tally.skipped, 1);
  EXPECT_EQ(tally.failed, 1);
  EXPECT_CONTAINS(tally.worst_element, "x[3]: analytic 2");
  EXPECT_EQ(x.f32()[1], 0.004f) << "the checker must restore every element exactly";
}

TEST(ErrorHelpers, FailWhenNothingIsThrownOrAPartIsMissing) {
  EXPECT_NONFATAL_FAILURE(error_message([] {}), "expected moe::InvalidArgument, nothing was thrown");
  EXPECT_EQ(error_message([] { throw InvalidArgument("op: x = 3 is bad"); }), "op: x = 3 is bad");
  EXPECT_THROW(error_message([] { throw std::runtime_error("other"); }), std::runtime_error);
  EXPECT_TRUE(contains_all("op: x = 3 is bad", {"x = 3", "bad"}));
  EXPECT_FALSE(contains_all("op: x = 3 is bad", {"x = 3", "y = 4"}));
  EXPECT_FALSE(contains_all("anything", {})) << "a check with nothing to look for cannot fail";
  EXPECT_NONFATAL_FAILURE(EXPECT_CONTAINS("op: x = 3", "x = 4"), "'x = 4' not in: \"op: x = 3\"");
}

// ---------------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------------

struct GemmCase {
  bool trans_a, trans_b;
  int64_t M, N, K;
  float alpha, beta;
  bool bf16 = false;  // moe::gemm_bf16 (alpha must be 1) instead of moe::gemm
};

// A's values rounded to bfloat16 (still float32), and the same values as a bfloat16 tensor.
Tensor round_to_bf16(Tensor& a) {
  Tensor a16 = Tensor::empty(a.shape(), DType::BF16);
  for (int64_t i = 0; i < a.numel(); ++i) {
    a16.bf16()[i] = bf16_from_float(a.f32()[i]);
    a.f32()[i] = float_from_bf16(a16.bf16()[i]);
  }
  return a16;
}

// Runs moe::gemm (or moe::gemm_bf16) on padded row strides (each ld = width + 3) and compares with a
// double-precision triple loop. Error bound for a float32 dot product of K terms plus the alpha/beta
// updates: |error| <= (K + 2) u (|alpha| sum_k |a_ik b_kj| + |beta c_ij|) (Higham's gamma_n); allow 2x
// that. The same bound holds for bfloat16 inputs, compared with the loop on their (rounded) values:
// a product of two 8-bit significands has at most 16 bits and is exact in float32's 24, so only the
// float32 sums round. Padding elements of C must stay untouched, and with beta = 0 C's NaN contents
// must be ignored.
void check_gemm(const GemmCase& g, std::mt19937& rng) {
  SCOPED_TRACE(::testing::Message() << "trans_a=" << g.trans_a << " trans_b=" << g.trans_b << " M=" << g.M
                                    << " N=" << g.N << " K=" << g.K << " beta=" << g.beta << " bf16=" << g.bf16);
  const int64_t pad = 3;
  const int64_t a_rows = g.trans_a ? g.K : g.M, a_cols = g.trans_a ? g.M : g.K;
  const int64_t b_rows = g.trans_b ? g.N : g.K, b_cols = g.trans_b ? g.K : g.N;
  const int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = g.N + pad;
  Tensor A = random_tensor({a_rows, lda}, rng);
  Tensor B = random_tensor({b_rows, ldb}, rng);
  Tensor C = random_tensor({g.M, ldc}, rng);
  Tensor A16, B16;
  if (g.bf16) A16 = round_to_bf16(A), B16 = round_to_bf16(B);
  if (g.beta == 0.f) {  // contents ignored: NaN must not leak into the result
    for (int64_t i = 0; i < g.M; ++i)
      for (int64_t j = 0; j < g.N; ++j) C.f32()[i * ldc + j] = kNaN;
  }
  const Tensor C_before = C.clone();
  auto a = [&](int64_t i, int64_t k) { return g.trans_a ? A.f32()[k * lda + i] : A.f32()[i * lda + k]; };
  auto b = [&](int64_t k, int64_t j) { return g.trans_b ? B.f32()[j * ldb + k] : B.f32()[k * ldb + j]; };

  if (g.bf16) {
    ASSERT_EQ(g.alpha, 1.f) << "gemm_bf16 has no alpha";
    gemm_bf16(g.trans_a, g.trans_b, g.M, g.N, g.K, A16.bf16(), lda, B16.bf16(), ldb, g.beta, C.f32(), ldc);
  } else {
    gemm(g.trans_a, g.trans_b, g.M, g.N, g.K, g.alpha, A.f32(), lda, B.f32(), ldb, g.beta, C.f32(), ldc);
  }

  for (int64_t i = 0; i < g.M; ++i) {
    for (int64_t j = 0; j < g.N; ++j) {
      double dot = 0.0, dot_abs = 0.0;
      for (int64_t k = 0; k < g.K; ++k) {
        dot += static_cast<double>(a(i, k)) * b(k, j);
        dot_abs += std::fabs(static_cast<double>(a(i, k)) * b(k, j));
      }
      const double c_old = g.beta == 0.f ? 0.0 : C_before.f32()[i * ldc + j];
      const double expected = g.alpha * dot + g.beta * c_old;
      const double bound = static_cast<double>(g.K + 2) * kUnitRoundoff *
                           (std::fabs(g.alpha) * dot_abs + std::fabs(g.beta * c_old));
      ASSERT_NEAR(C.f32()[i * ldc + j], expected, 2 * bound + 1e-30) << "C[" << i << ", " << j << "]";
    }
    for (int64_t j = g.N; j < ldc; ++j)
      ASSERT_EQ(C.f32()[i * ldc + j], C_before.f32()[i * ldc + j])
          << "padding C[" << i << ", " << j << "] written";
  }
}

TEST(Gemm, AllTransposeCombinationsMatchNaiveLoop) {
  std::mt19937 rng(11);
  for (bool bf16 : {false, true})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.f, 1.f, -0.5f}) {
          check_gemm({ta, tb, 5, 7, 9, bf16 ? 1.f : 0.75f, beta, bf16}, rng);
          check_gemm({ta, tb, 33, 40, 70, 1.f, beta, bf16}, rng);  // big enough for the provider's blocked kernels
        }
}

TEST(Gemm, ZeroInnerDimensionScalesC) {
  std::mt19937 rng(12);
  for (bool bf16 : {false, true})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        check_gemm({ta, tb, 4, 6, 0, 1.f, 0.f, bf16}, rng);   // C = 0, NaN contents ignored
        check_gemm({ta, tb, 4, 6, 0, 1.f, 1.f, bf16}, rng);   // C unchanged
        check_gemm({ta, tb, 4, 6, 0, 1.f, 2.5f, bf16}, rng);  // C scaled
      }
}

TEST(Gemm, EmptyOutputWritesNothing) {
  std::mt19937 rng(13);
  for (bool bf16 : {false, true})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        check_gemm({ta, tb, 0, 6, 5, 1.f, 0.f, bf16}, rng);  // M = 0: check_gemm also verifies C's padding
        check_gemm({ta, tb, 4, 0, 5, 1.f, 0.f, bf16}, rng);  // N = 0: every C element is padding, untouched
        check_gemm({ta, tb, 0, 0, 0, 1.f, 1.f, bf16}, rng);
      }
}

// gemm_bf16 caches a primitive per shape: more shapes than the cache holds (it is emptied and refilled),
// shapes seen before the emptying, and the same shape at another thread count must all stay right.
TEST(Gemm, Bf16PrimitiveCacheServesManyShapesAndThreadCounts) {
  std::mt19937 rng(14);
  const int threads = num_threads();
  for (int64_t M = 1; M <= kMaxCachedBf16Matmuls + 10; ++M) check_gemm({false, false, M, 3, 5, 1.f, 1.f, true}, rng);
  for (int64_t M = 1; M <= 3; ++M) check_gemm({false, false, M, 3, 5, 1.f, 1.f, true}, rng);
  for (int n : {1, 2}) {
    set_num_threads(n);
    check_gemm({true, false, 33, 40, 70, 1.f, 0.f, true}, rng);
  }
  set_num_threads(threads);
}

// Each thread has its own cache: products run on several threads at once match a serial one.
TEST(Gemm, Bf16FromConcurrentThreadsMatchesSerial) {
  std::mt19937 rng(15);
  const int64_t M = 17, N = 23, K = 40, kCopies = 4;
  Tensor A = random_tensor({M, K}, rng), B = random_tensor({K, N}, rng);
  const Tensor A16 = round_to_bf16(A), B16 = round_to_bf16(B);
  Tensor serial = Tensor::empty({M, N}), parallel = Tensor::empty({kCopies, M, N});
  gemm_bf16(false, false, M, N, K, A16.bf16(), K, B16.bf16(), N, 0.f, serial.f32(), N);
  std::vector<std::thread> threads;
  for (int64_t c = 0; c < kCopies; ++c)
    threads.emplace_back([&, c] {
      gemm_bf16(false, false, M, N, K, A16.bf16(), K, B16.bf16(), N, 0.f, parallel.f32() + c * M * N, N);
    });
  for (std::thread& t : threads) t.join();
  for (int64_t c = 0; c < kCopies; ++c)
    for (int64_t i = 0; i < M * N; ++i) ASSERT_EQ(parallel.f32()[c * M * N + i], serial.f32()[i]) << c << ", " << i;
}

// ---------------------------------------------------------------------------------------------
// linear
// ---------------------------------------------------------------------------------------------

TEST(Linear, ForwardMatchesTripleLoop) {
  std::mt19937 rng(21);
  const int64_t N = 6, in = 11, out = 5;
  Tensor x = random_tensor({N, in}, rng);
  Tensor w = random_tensor({in, out}, rng);
  Tensor b = random_tensor({out}, rng);
  for (bool with_bias : {false, true}) {
    Tensor y = nan_tensor({N, out});
    linear_forward(y, x, w, with_bias ? &b : nullptr);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < out; ++j) {
        double expected = with_bias ? b.f32()[j] : 0.0;
        for (int64_t i = 0; i < in; ++i) expected += static_cast<double>(at(x, n, i)) * at(w, i, j);
        // float32 dot of `in` terms of magnitude <= 1, plus the bias: error <= (in + 1) u (in + 1).
        EXPECT_NEAR(at(y, n, j), expected, (in + 1) * (in + 1) * kUnitRoundoff) << n << ", " << j;
      }
  }
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(22);
  const int64_t N = 4, in = 7, out = 5;
  Tensor x = random_tensor({N, in}, rng);
  Tensor w = random_tensor({in, out}, rng);
  Tensor b = random_tensor({out}, rng);
  Tensor r = random_tensor({N, out}, rng);
  Tensor y = Tensor::zeros({N, out});
  Tensor dx = Tensor::zeros({N, in}), dw = Tensor::zeros({in, out}), db = Tensor::zeros({out});
  linear_backward(&dx, &dw, &db, r, x, w);
  auto loss = [&] {
    linear_forward(y, x, w, &b);
    return weighted_sum(y, r);
  };
  expect_gradient("dx", x, dx, loss, kGradTol, kNotVacuous);
  expect_gradient("dw", w, dw, loss, kGradTol, kNotVacuous);
  expect_gradient("db", b, db, loss, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx, &dw, &db}, [&] { linear_backward(&dx, &dw, &db, r, x, w); });
}

TEST(Linear, BackwardSkipsNullGradients) {
  std::mt19937 rng(23);
  Tensor x = random_tensor({3, 4}, rng), w = random_tensor({4, 2}, rng), dy = random_tensor({3, 2}, rng);
  Tensor dw_all = Tensor::zeros({4, 2}), dw_only = Tensor::zeros({4, 2});
  Tensor dx = Tensor::zeros({3, 4}), db = Tensor::zeros({2});
  linear_backward(&dx, &dw_all, &db, dy, x, w);
  linear_backward(nullptr, &dw_only, nullptr, dy, x, w);
  for (int64_t i = 0; i < dw_all.numel(); ++i) EXPECT_EQ(dw_only.f32()[i], dw_all.f32()[i]);
}

TEST(Linear, NoRowsLeavesParameterGradientsUnchanged) {
  Tensor x = Tensor::zeros({0, 3}), w = Tensor::from({3, 2}, {1, 2, 3, 4, 5, 6});
  Tensor y = Tensor::zeros({0, 2}), dy = Tensor::zeros({0, 2});
  Tensor b = Tensor::from({2}, {1, 1});
  linear_forward(y, x, w, &b);
  Tensor dw = Tensor::from({3, 2}, {1, 1, 1, 1, 1, 1}), db = Tensor::from({2}, {7, 7});
  linear_backward(nullptr, &dw, &db, dy, x, w);
  for (int64_t i = 0; i < dw.numel(); ++i) EXPECT_EQ(dw.f32()[i], 1.f);
  EXPECT_EQ(db.f32()[0], 7.f);
}

// ---------------------------------------------------------------------------------------------
// bfloat16: conversions, and the linear ops on bfloat16 inputs
// ---------------------------------------------------------------------------------------------

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }

TEST(Convert, RoundsToNearestEvenAndKeepsInfinities) {
  struct Case {
    uint32_t f32;
    uint16_t bf16;
    const char* what;
  };
  const std::vector<Case> cases = {
      {0x3f800000, 0x3f80, "1, exact"},
      {0x3f808000, 0x3f80, "tie between 0x3f80 and 0x3f81: to the even 0x3f80"},
      {0x3f818000, 0x3f82, "tie between 0x3f81 and 0x3f82: to the even 0x3f82"},
      {0x3f808001, 0x3f81, "just above the tie: up"},
      {0x3f807fff, 0x3f80, "just below the tie: down"},
      {0xbf818000, 0xbf82, "a negative tie: the magnitude to even"},
      {0x80000000, 0x8000, "-0 keeps its sign"},
      {0x00000001, 0x0000, "float32's smallest subnormal: under half a bfloat16 subnormal, to 0"},
      {0x00018000, 0x0002, "a subnormal tie: to even"},
      {0x7f800000, 0x7f80, "+infinity"},
      {0xff800000, 0xff80, "-infinity"},
      {0x7f7f0000, 0x7f7f, "bfloat16's largest finite value, exact"},
      {0x7f7f7fff, 0x7f7f, "just below the tie with 2^128: stays finite"},
      {0x7f7f8000, 0x7f80, "the tie between the largest finite (odd) and 2^128: to infinity"},
      {0x7f7fffff, 0x7f80, "float32's largest finite (FLT_MAX): to infinity"},
  };
  Tensor x = Tensor::empty({static_cast<int64_t>(cases.size())});
  for (size_t i = 0; i < cases.size(); ++i) x.f32()[i] = std::bit_cast<float>(cases[i].f32);
  Tensor y = Tensor::empty(x.shape(), DType::BF16);
  convert(y, x);
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(y.bf16()[i], cases[i].bf16) << cases[i].what;
}

TEST(Convert, NanStaysNanWithItsSign) {
  // Quiet, signalling with only low payload bits (dropping them would make infinity), all ones, and
  // a payload whose rounding would carry into the exponent.
  const std::vector<uint32_t> nans = {0x7fc00000, 0x7f800001, 0xffffffff, 0x7f80ffff, 0xff800001};
  Tensor x = Tensor::empty({static_cast<int64_t>(nans.size())});
  for (size_t i = 0; i < nans.size(); ++i) x.f32()[i] = std::bit_cast<float>(nans[i]);
  Tensor y = Tensor::empty(x.shape(), DType::BF16), back = Tensor::empty(x.shape());
  convert(y, x);
  convert(back, y);
  for (size_t i = 0; i < nans.size(); ++i) {
    EXPECT_TRUE(std::isnan(back.f32()[i])) << std::hex << nans[i] << " became " << y.bf16()[i];
    EXPECT_EQ(y.bf16()[i] >> 15, nans[i] >> 31) << std::hex << nans[i] << ": the sign";
  }
}

// Every one of the 65536 bfloat16 patterns (enough for the parallel path): to float32 exactly (the
// pattern is the float's top half, the rest zero), and back to the same pattern; NaNs stay NaN.
TEST(Convert, EveryBf16ValueConvertsExactlyAndBack) {
  const int64_t n = 65536;
  ASSERT_GE(n, cpu::kMinParallelElements);
  Tensor x = Tensor::empty({256, 256}, DType::BF16);
  for (int64_t i = 0; i < n; ++i) x.bf16()[i] = static_cast<uint16_t>(i);
  Tensor f = Tensor::empty({256, 256}), back = Tensor::empty({256, 256}, DType::BF16);
  convert(f, x);
  convert(back, f);
  for (int64_t i = 0; i < n; ++i) {
    const bool nan = (i & 0x7fff) > 0x7f80;
    ASSERT_EQ(bits_of(f.f32()[i]), static_cast<uint32_t>(i) << 16) << std::hex << i;
    if (nan)
      ASSERT_TRUE(std::isnan(float_from_bf16(back.bf16()[i]))) << std::hex << i;
    else
      ASSERT_EQ(back.bf16()[i], i) << std::hex << i;
  }
}

// Inputs in [-1, 1] rounded to bfloat16: `x` keeps the rounded values in float32, the result holds them
// in bfloat16.
Tensor random_bf16(Tensor& x, const Shape& shape, std::mt19937& rng) {
  x = random_tensor(shape, rng);
  return round_to_bf16(x);
}

// A bfloat16 linear op against the float32 op on the same (rounded) values: every product of two
// bfloat16 values is exact in float32 (8 + 8 significand bits fit in 24), so both results are float32
// sums of the same K exact terms (|term| <= 1 here) onto a start value (|start| <= 1: a bias, or a
// gradient's old value), in possibly different orders. Each is within (K + 2) u (K + 1) of the exact
// sum (Higham's gamma_n), so they differ by at most twice that. A wrong operand, transpose or stride
// moves results by O(1).
void expect_same_sums(const Tensor& got, const Tensor& want, int64_t K, const char* what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const double bound = 2 * (K + 2) * kUnitRoundoff * (K + 1);
  double max_abs = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    ASSERT_NEAR(got.f32()[i], want.f32()[i], bound) << what << ", element " << i;
    max_abs = std::max(max_abs, std::fabs(double(want.f32()[i])));
  }
  EXPECT_GT(max_abs, 0.1) << what << " is ~0: the comparison proves little";
}

TEST(LinearBf16, ForwardAndBackwardMatchFloat32OnRoundedInputs) {
  std::mt19937 rng(31);
  const int64_t N = 37, in = 70, out = 45;  // not multiples of the provider's blocks: tails too
  Tensor x, w, dy;
  const Tensor x16 = random_bf16(x, {N, in}, rng), w16 = random_bf16(w, {in, out}, rng);
  const Tensor dy16 = random_bf16(dy, {N, out}, rng), b = random_tensor({out}, rng);
  Tensor y = nan_tensor({N, out}), y16 = nan_tensor({N, out});
  linear_forward(y, x, w, &b);
  linear_forward(y16, x16, w16, &b);
  expect_same_sums(y16, y, in, "y");
  // Gradients start from the same random values: a backward that overwrites instead of adding fails.
  const Tensor dx0 = random_tensor({N, in}, rng), dw0 = random_tensor({in, out}, rng), db0 = random_tensor({out}, rng);
  Tensor dx = dx0.clone(), dw = dw0.clone(), db = db0.clone();
  Tensor dx16 = dx0.clone(), dw16 = dw0.clone(), db16 = db0.clone();
  linear_backward(&dx, &dw, &db, dy, x, w);
  linear_backward(&dx16, &dw16, &db16, dy16, x16, w16);
  expect_same_sums(dx16, dx, out, "dx");
  expect_same_sums(dw16, dw, N, "dw");
  expect_same_sums(db16, db, N, "db");
}

TEST(LinearBf16, TransposedForwardAndBackwardMatchFloat32OnRoundedInputs) {
  std::mt19937 rng(32);
  const int64_t N = 37, in = 70, out = 45;
  Tensor x, w, dy;
  const Tensor x16 = random_bf16(x, {N, in}, rng), w16 = random_bf16(w, {out, in}, rng);
  const Tensor dy16 = random_bf16(dy, {N, out}, rng);
  Tensor y = nan_tensor({N, out}), y16 = nan_tensor({N, out});
  linear_transposed_forward(y, x, w);
  linear_transposed_forward(y16, x16, w16);
  expect_same_sums(y16, y, in, "y");
  const Tensor dx0 = random_tensor({N, in}, rng), dw0 = random_tensor({out, in}, rng);
  Tensor dx = dx0.clone(), dw = dw0.clone(), dx16 = dx0.clone(), dw16 = dw0.clone();
  linear_transposed_backward(&dx, &dw, dy, x, w);
  linear_transposed_backward(&dx16, &dw16, dy16, x16, w16);
  expect_same_sums(dx16, dx, out, "dx");
  expect_same_sums(dw16, dw, N, "dw");
}

TEST(LinearBf16, NoRowsLeavesParameterGradientsUnchanged) {
  const Tensor x16 = Tensor::zeros({0, 3}, DType::BF16), w16 = Tensor::zeros({3, 2}, DType::BF16);
  const Tensor dy16 = Tensor::zeros({0, 2}, DType::BF16);
  Tensor dw = Tensor::from({3, 2}, {1, 1, 1, 1, 1, 1}), db = Tensor::from({2}, {7, 7});
  linear_backward(nullptr, &dw, &db, dy16, x16, w16);
  for (int64_t i = 0; i < dw.numel(); ++i) EXPECT_EQ(dw.f32()[i], 1.f);
  EXPECT_EQ(db.f32()[0], 7.f);
}

// ---------------------------------------------------------------------------------------------
// grouped_linear
// ---------------------------------------------------------------------------------------------

// Groups of 3, 0, 5 and 1 rows: an empty group between two others, and groups of different sizes.
const std::vector<int64_t> kGroupOffsets = {0, 3, 3, 8, 9};

// w_g as a 2-D view of the stacked (G, in, out) weight.
Tensor group_weight(const Tensor& w, int64_t g) { return w.rows(g, g + 1).reshape({w.dim(1), w.dim(2)}); }

// The group of row r under `offset`.
int64_t group_of(const std::vector<int64_t>& offset, int64_t r) {
  int64_t g = 0;
  while (offset[g + 1] <= r) ++g;
  return g;
}

// A float32 sum of n products, accumulated in any order (GEMM blocking, FMAs), is off from the exact sum
// by at most n u sum|terms| to first order; (n + 2) u sum|terms| also covers rounding the products and
// adding the start value once.
double sum_tolerance(int64_t n, double sum_abs) { return static_cast<double>(n + 2) * kUnitRoundoff * sum_abs; }

TEST(GroupedLinear, ForwardMatchesPerGroupDoubleReference) {
  std::mt19937 rng(24);
  const int64_t M = kGroupOffsets.back(), G = 4, in = 7, out = 5;
  const Tensor x = random_tensor({M, in}, rng), w = random_tensor({G, in, out}, rng);
  Tensor y = nan_tensor({M, out});
  grouped_linear_forward(y, x, kGroupOffsets, w);
  for (int64_t r = 0; r < M; ++r) {
    const int64_t g = group_of(kGroupOffsets, r);
    const Tensor w_g = group_weight(w, g);
    for (int64_t j = 0; j < out; ++j) {
      double expected = 0, sum_abs = 0;
      for (int64_t i = 0; i < in; ++i) {
        expected += static_cast<double>(at(x, r, i)) * at(w_g, i, j);
        sum_abs += std::fabs(static_cast<double>(at(x, r, i)) * at(w_g, i, j));
      }
      EXPECT_NEAR(at(y, r, j), expected, sum_tolerance(in, sum_abs)) << "row " << r << " (group " << g << "), " << j;
    }
  }
}

TEST(GroupedLinear, BackwardAccumulatesThePerGroupDoubleReference) {
  std::mt19937 rng(25);
  const int64_t M = kGroupOffsets.back(), G = 4, in = 7, out = 5;
  const Tensor x = random_tensor({M, in}, rng), w = random_tensor({G, in, out}, rng);
  const Tensor dy = random_tensor({M, out}, rng);
  // Non-zero starting gradients: the backward must add to them, and leave the empty group's dw_g as it was.
  const Tensor dx_start = random_tensor({M, in}, rng), dw_start = random_tensor({G, in, out}, rng);
  Tensor dx = dx_start.clone(), dw = dw_start.clone();
  grouped_linear_backward(&dx, &dw, dy, x, kGroupOffsets, w);
  for (int64_t r = 0; r < M; ++r) {  // dx_g = dy_g w_g^T
    const Tensor w_g = group_weight(w, group_of(kGroupOffsets, r));
    for (int64_t i = 0; i < in; ++i) {
      double expected = at(dx_start, r, i), sum_abs = std::fabs(expected);
      for (int64_t j = 0; j < out; ++j) {
        expected += static_cast<double>(at(dy, r, j)) * at(w_g, i, j);
        sum_abs += std::fabs(static_cast<double>(at(dy, r, j)) * at(w_g, i, j));
      }
      EXPECT_NEAR(at(dx, r, i), expected, sum_tolerance(out, sum_abs)) << "dx " << r << ", " << i;
    }
  }
  for (int64_t g = 0; g < G; ++g) {  // dw_g = x_g^T dy_g
    const Tensor dw_g = group_weight(dw, g), start_g = group_weight(dw_start, g);
    const int64_t rows = kGroupOffsets[g + 1] - kGroupOffsets[g];
    for (int64_t i = 0; i < in; ++i)
      for (int64_t j = 0; j < out; ++j) {
        double expected = at(start_g, i, j), sum_abs = std::fabs(expected);
        for (int64_t r = kGroupOffsets[g]; r < kGroupOffsets[g + 1]; ++r) {
          expected += static_cast<double>(at(x, r, i)) * at(dy, r, j);
          sum_abs += std::fabs(static_cast<double>(at(x, r, i)) * at(dy, r, j));
        }
        if (rows == 0)
          EXPECT_EQ(at(dw_g, i, j), at(start_g, i, j)) << "empty group " << g << " changed dw at " << i << ", " << j;
        else
          EXPECT_NEAR(at(dw_g, i, j), expected, sum_tolerance(rows, sum_abs)) << "dw " << g << ": " << i << ", " << j;
      }
  }
  expect_backward_accumulates({&dx, &dw}, [&] { grouped_linear_backward(&dx, &dw, dy, x, kGroupOffsets, w); });
}

TEST(GroupedLinear, BackwardSkipsNullGradients) {
  std::mt19937 rng(26);
  const int64_t M = kGroupOffsets.back();
  const Tensor x = random_tensor({M, 3}, rng), w = random_tensor({4, 3, 2}, rng), dy = random_tensor({M, 2}, rng);
  Tensor dx_both = Tensor::zeros({M, 3}), dw_both = Tensor::zeros({4, 3, 2});
  Tensor dx_only = Tensor::zeros({M, 3}), dw_only = Tensor::zeros({4, 3, 2});
  grouped_linear_backward(&dx_both, &dw_both, dy, x, kGroupOffsets, w);
  grouped_linear_backward(&dx_only, nullptr, dy, x, kGroupOffsets, w);
  grouped_linear_backward(nullptr, &dw_only, dy, x, kGroupOffsets, w);
  EXPECT_EQ(floats_of(dx_only), floats_of(dx_both));
  EXPECT_EQ(floats_of(dw_only), floats_of(dw_both));
}

// One group holding every row is linear_forward / linear_backward, bit for bit (the same GEMMs).
TEST(GroupedLinear, OneGroupIsTheLinearOp) {
  std::mt19937 rng(27);
  const int64_t M = 6, in = 4, out = 3;
  const Tensor x = random_tensor({M, in}, rng), w = random_tensor({1, in, out}, rng), dy = random_tensor({M, out}, rng);
  const Tensor w2 = group_weight(w, 0);
  Tensor y = nan_tensor({M, out}), y_linear = nan_tensor({M, out});
  grouped_linear_forward(y, x, {0, M}, w);
  linear_forward(y_linear, x, w2, nullptr);
  EXPECT_EQ(floats_of(y), floats_of(y_linear));
  Tensor dx = Tensor::zeros({M, in}), dw = Tensor::zeros({1, in, out});
  Tensor dx_linear = Tensor::zeros({M, in}), dw_linear = Tensor::zeros({in, out});
  grouped_linear_backward(&dx, &dw, dy, x, {0, M}, w);
  linear_backward(&dx_linear, &dw_linear, nullptr, dy, x, w2);
  EXPECT_EQ(floats_of(dx), floats_of(dx_linear));
  EXPECT_EQ(floats_of(dw), floats_of(dw_linear));
}

// No rows at all (every group empty): nothing to write, the weight gradient unchanged.
TEST(GroupedLinear, NoRowsLeavesTheWeightGradientUnchanged) {
  const Tensor x = Tensor::zeros({0, 3}), dy = Tensor::zeros({0, 2}), w = Tensor::zeros({2, 3, 2});
  Tensor y = Tensor::zeros({0, 2}), dw = Tensor::from({2, 3, 2}, std::vector<float>(12, 1.5f));
  grouped_linear_forward(y, x, {0, 0, 0}, w);
  grouped_linear_backward(nullptr, &dw, dy, x, {0, 0, 0}, w);
  EXPECT_EQ(floats_of(dw), std::vector<float>(12, 1.5f));
}

// bfloat16 grouped_linear against the float32 op on the same rounded values, as LinearBf16 (expect_same_sums:
// the same exact products summed in another order). Groups of 1 to 70 rows and an empty one, twice with
// other row counts: the bfloat16 products leave the row count open (one primitive for every count), so a
// count that reuses another's primitive must still compute only its own rows.
TEST(GroupedLinearBf16, ForwardAndBackwardMatchFloat32OnRoundedInputs) {
  std::mt19937 rng(28);
  const int64_t in = 70, out = 45;
  const std::vector<int64_t> offsets[] = {{0, 37, 37, 107, 108}, {0, 5, 40, 41, 60}};
  for (const std::vector<int64_t>& offset : offsets) {
    const int64_t M = offset.back(), G = static_cast<int64_t>(offset.size()) - 1;
    SCOPED_TRACE("M = " + std::to_string(M));
    Tensor x, w, dy;
    const Tensor x16 = random_bf16(x, {M, in}, rng), w16 = random_bf16(w, {G, in, out}, rng);
    const Tensor dy16 = random_bf16(dy, {M, out}, rng);
    Tensor y = nan_tensor({M, out}), y16 = nan_tensor({M, out});
    grouped_linear_forward(y, x, offset, w);
    grouped_linear_forward(y16, x16, offset, w16);
    expect_same_sums(y16, y, in, "y");
    const Tensor dx0 = random_tensor({M, in}, rng), dw0 = random_tensor({G, in, out}, rng);
    Tensor dx = dx0.clone(), dw = dw0.clone(), dx16 = dx0.clone(), dw16 = dw0.clone();
    grouped_linear_backward(&dx, &dw, dy, x, offset, w);
    grouped_linear_backward(&dx16, &dw16, dy16, x16, offset, w16);
    expect_same_sums(dx16, dx, out, "dx");
    expect_same_sums(dw16, dw, 70, "dw");  // K = a group's rows, at most 70
  }
}

TEST(GroupedLinearBf16, MixedDtypesAreRefused) {
  const Tensor x16 = Tensor::zeros({5, 3}, DType::BF16), w32 = Tensor::zeros({2, 3, 4});
  const Tensor w16 = Tensor::zeros({2, 3, 4}, DType::BF16), dy32 = Tensor::zeros({5, 4});
  Tensor y = Tensor::zeros({5, 4}), dw16 = Tensor::zeros({2, 3, 4}, DType::BF16);
  const char* mixed = "; x, w and dy must all be float32 or all bfloat16";
  EXPECT_CONTAINS(error_message([&] { grouped_linear_forward(y, x16, {0, 2, 5}, w32); }),
                  "grouped_linear_forward: w has dtype float32 but x has bfloat16", mixed);
  EXPECT_CONTAINS(error_message([&] { grouped_linear_backward(nullptr, nullptr, dy32, x16, {0, 2, 5}, w16); }),
                  "grouped_linear_backward: dy has dtype float32 but x has bfloat16", mixed);
  Tensor dy16 = Tensor::zeros({5, 4}, DType::BF16);
  EXPECT_CONTAINS(error_message([&] { grouped_linear_backward(nullptr, &dw16, dy16, x16, {0, 2, 5}, w16); }),
                  "grouped_linear_backward: dw has dtype bfloat16, expected float32");
}

TEST(GroupedLinear, BadOffsetsAndShapesAreRefusedBeforeAnythingIsWritten) {
  const Tensor x = Tensor::zeros({5, 3}), w = Tensor::zeros({2, 3, 4}), dy = Tensor::zeros({5, 4});
  Tensor y = Tensor::zeros({5, 4}), dw = Tensor::from({2, 3, 4}, std::vector<float>(24, 1.f));
  const std::string accepted = "expected G + 1 = 3 non-decreasing row starts from 0 to M = 5";
  const struct {
    std::vector<int64_t> offset;
    std::string problem;
  } bad[] = {
      {{0, 5}, "offset has 2 entries"},
      {{0, 2, 5, 5}, "offset has 4 entries"},
      {{}, "offset has 0 entries"},
      {{1, 2, 5}, "offset[0] = 1"},
      {{0, 4, 3}, "offset[2] = 3 is below offset[1] = 4"},
      {{0, -1, 5}, "offset[1] = -1 is below offset[0] = 0"},
      {{0, 2, 6}, "offset[2] = 6"},
      {{0, 2, 4}, "offset[2] = 4"},
  };
  for (const auto& b : bad) {
    EXPECT_CONTAINS(error_message([&] { grouped_linear_forward(y, x, b.offset, w); }),
                    "grouped_linear_forward: " + b.problem, accepted);
    EXPECT_CONTAINS(error_message([&] { grouped_linear_backward(nullptr, &dw, dy, x, b.offset, w); }),
                    "grouped_linear_backward: " + b.problem, accepted);
  }
  EXPECT_EQ(floats_of(dw), std::vector<float>(24, 1.f)) << "a refused backward wrote dw";
  EXPECT_CONTAINS(error_message([&] { grouped_linear_forward(y, x, {0, 2, 5}, Tensor::zeros({2, 4, 4})); }),
                  "grouped_linear_forward: w has shape (2, 4, 4), expected (2, 3, 4)");
  EXPECT_CONTAINS(error_message([&] { grouped_linear_forward(y, x, {0, 2, 5}, Tensor::zeros({3, 4})); }),
                  "grouped_linear_forward: w has shape (3, 4), expected a tensor of rank 3");
  Tensor y_wrong = Tensor::zeros({5, 3});
  EXPECT_CONTAINS(error_message([&] { grouped_linear_forward(y_wrong, x, {0, 2, 5}, w); }),
                  "grouped_linear_forward: y has shape (5, 3), expected (5, 4)");
  EXPECT_CONTAINS(error_message([&] { grouped_linear_backward(nullptr, &y_wrong, dy, x, {0, 2, 5}, w); }),
                  "grouped_linear_backward: dw has shape (5, 3), expected (2, 3, 4)");
}

// ---------------------------------------------------------------------------------------------
// activations
// ---------------------------------------------------------------------------------------------

double gelu_reference(double v) {
  return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
}

TEST(Relu, ForwardClampsNegatives) {
  Tensor x = Tensor::from({2, 3}, {-2.f, -0.f, 0.5f, 3.f, -1e-30f, 1e-30f});
  Tensor y = nan_tensor({2, 3});
  relu_forward(y, x);
  const std::vector<float> expected = {0.f, 0.f, 0.5f, 3.f, 0.f, 1e-30f};
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(y.f32()[i], expected[i]) << i;
}

TEST(Relu, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(31);
  Tensor x = random_away_from_zero({3, 19}, rng);  // 19: vector body plus a remainder
  Tensor r = random_tensor({3, 19}, rng);
  Tensor y = Tensor::zeros({3, 19}), dx = Tensor::zeros({3, 19});
  relu_backward(dx, r, x);
  expect_gradient("dx", x, dx, [&] {
    relu_forward(y, x);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { relu_backward(dx, r, x); });
}

TEST(Gelu, ForwardAtKnownPoints) {
  // Values of the formula in core/ops.h, evaluated in double (Python's math module).
  struct Point {
    float x;
    double gelu;
  };
  const std::vector<Point> known = {
      {0.f, 0.0},
      {1.f, 0.8411919906082768},
      {-1.f, -0.15880800939172324},
      {2.f, 1.954597694087775},
      {0.5f, 0.34571400982514394},
      {-3.f, -0.0036373920817729943},
      {10.f, 10.0},
      {-10.f, -0.0},
      {-5.f, -2.2917961972623857e-07},
  };
  const int64_t count = static_cast<int64_t>(known.size());
  Tensor x = Tensor::zeros({count});
  for (int64_t i = 0; i < count; ++i) x.f32()[i] = known[i].x;
  Tensor y = nan_tensor({count});
  gelu_forward(y, x);
  for (int64_t i = 0; i < count; ++i) {
    EXPECT_NEAR(known[i].gelu, gelu_reference(known[i].x), 1e-12) << "reference formula at " << known[i].x;
    // A few products: a few u relative. The CPU tanh (core/cpu/fast_math.h) has an absolute error
    // below 3e-7 (about 3u), scaled by 0.5 |x|; for x < 0, 1 + tanh cancels, adding up to |x| u.
    const double tol =
        8 * kUnitRoundoff * std::fabs(known[i].gelu) + 4 * kUnitRoundoff * std::fabs(known[i].x);
    EXPECT_NEAR(y.f32()[i], known[i].gelu, tol) << "gelu(" << known[i].x << ")";
  }
}

TEST(Gelu, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(32);
  Tensor x = random_tensor({3, 19}, rng, -3.f, 3.f);
  Tensor r = random_tensor({3, 19}, rng);
  Tensor y = Tensor::zeros({3, 19}), dx = Tensor::zeros({3, 19});
  gelu_backward(dx, r, x);
  expect_gradient("dx", x, dx, [&] {
    gelu_forward(y, x);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { gelu_backward(dx, r, x); });
}

TEST(Swiglu, ForwardMatchesReference) {
  std::mt19937 rng(33);
  const int64_t N = 4, h = 9;
  Tensor x = random_tensor({N, 2 * h}, rng, -4.f, 4.f);
  Tensor y = nan_tensor({N, h});
  swiglu_forward(y, x);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < h; ++j) {
      const double gate = at(x, n, j), up = at(x, n, h + j);
      const double expected = gate / (1.0 + std::exp(-gate)) * up;
      EXPECT_NEAR(at(y, n, j), expected, 8 * kUnitRoundoff * std::fabs(expected) + 1e-7) << n << ", " << j;
    }
}

TEST(Swiglu, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(34);
  const int64_t N = 3, h = 11;
  Tensor x = random_tensor({N, 2 * h}, rng, -2.f, 2.f);
  Tensor r = random_tensor({N, h}, rng);
  Tensor y = Tensor::zeros({N, h}), dx = Tensor::zeros({N, 2 * h});
  swiglu_backward(dx, r, x);
  expect_gradient("dx", x, dx, [&] {
    swiglu_forward(y, x);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { swiglu_backward(dx, r, x); });
}

// In bfloat16 runs the activations write y and accumulate dx in bfloat16 (the products' inputs): the
// float32 result rounded once, so each element must equal bf16_from_float of the float32 op's result
// bit for bit (forward), and of dx0 + gradient for the backward started from the same bfloat16 values
// dx0 (the float32 path adds the same float32 terms). Both sizes: a serial call and one that spreads
// over threads (>= kMinParallelElements elements).
TEST(Activations, Bf16OutputsAreTheFloat32ResultsRoundedOnce) {
  std::mt19937 rng(35);
  using Forward = void (*)(Tensor&, const Tensor&);
  using Backward = void (*)(Tensor&, const Tensor&, const Tensor&);
  struct Case {
    const char* name;
    Forward forward;
    Backward backward;
    bool halves;  // swiglu: y and dy have half of x's columns
  };
  const Case cases[] = {{"relu", relu_forward, relu_backward, false},
                        {"gelu", gelu_forward, gelu_backward, false},
                        {"swiglu", swiglu_forward, swiglu_backward, true}};
  auto rounded = [](const Tensor& t) {
    Tensor r = Tensor::empty(t.shape(), DType::BF16);
    convert(r, t);
    return r;
  };
  for (const int64_t rows : {3, 128})
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(c.name) + " rows " + std::to_string(rows));
      const int64_t cols = 2 * 300;
      const Tensor x = random_tensor({rows, cols}, rng, -4.f, 4.f);
      const Shape out_shape{rows, c.halves ? cols / 2 : cols};
      const Tensor dy = random_tensor(out_shape, rng);
      Tensor y32 = nan_tensor(out_shape), y16 = Tensor::empty(out_shape, DType::BF16);
      c.forward(y32, x);
      c.forward(y16, x);
      const Tensor expected_y = rounded(y32);
      EXPECT_EQ(0, std::memcmp(y16.bf16(), expected_y.bf16(), y16.numel() * sizeof(uint16_t))) << "y";

      const Tensor dx0 = rounded(random_tensor(x.shape(), rng));
      Tensor dx32 = Tensor::empty(x.shape()), dx16 = dx0.clone();
      convert(dx32, dx0);
      c.backward(dx32, dy, x);
      c.backward(dx16, dy, x);
      const Tensor expected_dx = rounded(dx32);
      EXPECT_EQ(0, std::memcmp(dx16.bf16(), expected_dx.bf16(), dx16.numel() * sizeof(uint16_t))) << "dx";
      int64_t changed = 0;  // not vacuous: the gradient moved most elements of dx0
      for (int64_t i = 0; i < dx16.numel(); ++i) changed += dx16.bf16()[i] != dx0.bf16()[i];
      EXPECT_GT(changed, dx16.numel() / 3);
    }
}

// ---------------------------------------------------------------------------------------------
// softmax
// ---------------------------------------------------------------------------------------------

// softmax of one row in double, max-subtracted.
std::vector<double> softmax_reference(const Tensor& x, int64_t row) {
  const int64_t C = x.dim(1);
  double row_max = -std::numeric_limits<double>::infinity(), sum = 0.0;
  for (int64_t c = 0; c < C; ++c) row_max = std::max(row_max, static_cast<double>(at(x, row, c)));
  std::vector<double> p(C);
  for (int64_t c = 0; c < C; ++c) sum += p[c] = std::exp(at(x, row, c) - row_max);
  for (double& v : p) v /= sum;
  return p;
}

TEST(Softmax, ForwardRowsSumToOneAndMatchExpOverSum) {
  std::mt19937 rng(41);
  const int64_t N = 5, C = 23;
  Tensor x = random_tensor({N, C}, rng, -5.f, 5.f);
  for (int64_t c = 0; c < C; ++c) x.f32()[4 * C + c] += 1000.f;  // exp(1000) overflows without the max shift
  Tensor y = nan_tensor({N, C});
  softmax_forward(y, x);
  for (int64_t n = 0; n < N; ++n) {
    const std::vector<double> p = softmax_reference(x, n);
    double row_sum = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      row_sum += at(y, n, c);
      // float32 exp, a C-term sum and a multiply: relative error <= (C + 4) u. Row 4's inputs near
      // 1000 are themselves rounded to ulp(1000) = 6e-5, which the reference sees too.
      EXPECT_NEAR(at(y, n, c), p[c], (C + 4) * kUnitRoundoff * p[c] + 1e-9) << n << ", " << c;
    }
    EXPECT_NEAR(row_sum, 1.0, 2 * (C + 4) * kUnitRoundoff) << "row " << n;
  }
}

TEST(Softmax, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(42);
  const int64_t N = 3, C = 17;
  Tensor x = random_tensor({N, C}, rng, -2.f, 2.f);
  Tensor r = random_tensor({N, C}, rng, -3.f, 3.f);
  Tensor y = Tensor::zeros({N, C}), dx = Tensor::zeros({N, C});
  softmax_forward(y, x);
  softmax_backward(dx, r, y);
  Tensor y_saved = y.clone();
  expect_gradient("dx", x, dx, [&] {
    softmax_forward(y, x);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { softmax_backward(dx, r, y_saved); });
}

TEST(Sigmoid, ForwardMatchesTheDoubleFormulaAndSaturates) {
  std::mt19937 rng(43);
  Tensor x = random_tensor({4, 9}, rng, -8.f, 8.f);
  x.f32()[0] = -200.f;  // exp(200) overflows float32: 1 / (1 + inf) = 0, no NaN
  x.f32()[1] = 200.f;
  Tensor y = nan_tensor({4, 9});
  sigmoid_forward(y, x);
  for (int64_t i = 2; i < x.numel(); ++i) {  // the two saturated ones below
    const double want = 1.0 / (1.0 + std::exp(-static_cast<double>(x.f32()[i])));
    // float32 exp (within an ulp or two), an add and a division: 4u of the value.
    EXPECT_NEAR(y.f32()[i], want, 4 * kUnitRoundoff * want) << i;
  }
  EXPECT_EQ(y.f32()[0], 0.f);
  EXPECT_EQ(y.f32()[1], 1.f);
}

TEST(Sigmoid, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(44);
  Tensor x = random_tensor({3, 11}, rng, -4.f, 4.f), r = random_tensor({3, 11}, rng, -3.f, 3.f);
  Tensor y = Tensor::zeros({3, 11}), dx = Tensor::zeros({3, 11});
  sigmoid_forward(y, x);
  const Tensor y_saved = y.clone();
  sigmoid_backward(dx, r, y_saved);
  expect_gradient("dx", x, dx, [&] {
    sigmoid_forward(y, x);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { sigmoid_backward(dx, r, y_saved); });
}

TEST(NormalizeRows, ForwardDividesEachRowByItsSum) {
  std::mt19937 rng(45);
  const int64_t N = 6, C = 8;
  Tensor x = random_tensor({N, C}, rng, 0.01f, 1.f);
  Tensor y = nan_tensor({N, C});
  normalize_rows_forward(y, x);
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0.0;
    for (int64_t c = 0; c < C; ++c) sum += at(x, n, c);
    for (int64_t c = 0; c < C; ++c) {
      const double want = at(x, n, c) / sum;
      // A C-term float32 sum of positive values and one division: (C + 1) u relative.
      EXPECT_NEAR(at(y, n, c), want, (C + 1) * kUnitRoundoff * want) << n << ", " << c;
    }
  }
}

TEST(NormalizeRows, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(46);
  const int64_t N = 4, C = 7;
  Tensor x = random_tensor({N, C}, rng, 0.1f, 1.f), r = random_tensor({N, C}, rng, -3.f, 3.f);
  Tensor y = Tensor::zeros({N, C}), dx = Tensor::zeros({N, C});
  normalize_rows_backward(dx, r, x);
  expect_gradient("dx", x, dx, [&] {
    normalize_rows_forward(y, x);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { normalize_rows_backward(dx, r, x); });
}

// ---------------------------------------------------------------------------------------------
// norms
// ---------------------------------------------------------------------------------------------

constexpr float kEps = 1e-5f;

TEST(Rmsnorm, ForwardMatchesReferenceAndUnitRms) {
  std::mt19937 rng(51);
  const int64_t N = 4, C = 21;
  Tensor x = random_tensor({N, C}, rng, -3.f, 3.f);
  Tensor g = random_tensor({C}, rng, 0.5f, 1.5f);
  Tensor ones = Tensor::zeros({C});
  ones.fill(1.f);
  Tensor y = nan_tensor({N, C}), rstd = nan_tensor({N});
  rmsnorm_forward(y, rstd, x, g, kEps);
  Tensor y_unit = nan_tensor({N, C}), rstd_unit = nan_tensor({N});
  rmsnorm_forward(y_unit, rstd_unit, x, ones, kEps);
  for (int64_t n = 0; n < N; ++n) {
    double mean_sq = 0.0;
    for (int64_t c = 0; c < C; ++c) mean_sq += static_cast<double>(at(x, n, c)) * at(x, n, c) / C;
    const double r = 1.0 / std::sqrt(mean_sq + kEps);
    // C-term float32 sums and a sqrt: relative error within (C + 4) u.
    const double tol = (C + 4) * kUnitRoundoff;
    EXPECT_NEAR(rstd.f32()[n], r, tol * r) << "rstd " << n;
    double y_unit_mean_sq = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double expected = at(x, n, c) * r * g.f32()[c];
      EXPECT_NEAR(at(y, n, c), expected, tol * std::fabs(expected) + 1e-7) << n << ", " << c;
      y_unit_mean_sq += static_cast<double>(at(y_unit, n, c)) * at(y_unit, n, c) / C;
    }
    // With g = 1, mean(y^2) = mean(x^2) / (mean(x^2) + eps): 1 up to eps / mean(x^2) ~ 1e-5.
    EXPECT_NEAR(y_unit_mean_sq, 1.0, 1e-4) << "row " << n;
  }
}

TEST(Rmsnorm, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(52);
  const int64_t N = 3, C = 13;
  Tensor x = random_tensor({N, C}, rng);
  Tensor g = random_tensor({C}, rng, 0.5f, 1.5f);
  Tensor r = random_tensor({N, C}, rng);
  Tensor y = Tensor::zeros({N, C}), rstd = Tensor::zeros({N});
  Tensor dx = Tensor::zeros({N, C}), dg = Tensor::zeros({C});
  rmsnorm_forward(y, rstd, x, g, kEps);
  const Tensor rstd_saved = rstd.clone();
  rmsnorm_backward(&dx, &dg, r, x, g, rstd_saved);
  auto loss = [&] {
    rmsnorm_forward(y, rstd, x, g, kEps);
    return weighted_sum(y, r);
  };
  expect_gradient("dx", x, dx, loss, kGradTol, kNotVacuous);
  expect_gradient("dg", g, dg, loss, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx, &dg}, [&] { rmsnorm_backward(&dx, &dg, r, x, g, rstd_saved); });
}

TEST(Layernorm, ForwardHasZeroMeanUnitVarianceAndMatchesReference) {
  std::mt19937 rng(53);
  const int64_t N = 4, C = 21;
  Tensor x = random_tensor({N, C}, rng, -2.f, 4.f);  // nonzero mean on purpose
  Tensor g = random_tensor({C}, rng, 0.5f, 1.5f), b = random_tensor({C}, rng);
  Tensor ones = Tensor::zeros({C}), zeros = Tensor::zeros({C});
  ones.fill(1.f);
  Tensor y = nan_tensor({N, C}), mean = nan_tensor({N}), rstd = nan_tensor({N});
  Tensor y_unit = nan_tensor({N, C});
  layernorm_forward(y, mean, rstd, x, g, b, kEps);
  Tensor mean2 = nan_tensor({N}), rstd2 = nan_tensor({N});
  layernorm_forward(y_unit, mean2, rstd2, x, ones, zeros, kEps);
  for (int64_t n = 0; n < N; ++n) {
    double m = 0.0, var = 0.0;
    for (int64_t c = 0; c < C; ++c) m += at(x, n, c) / static_cast<double>(C);
    for (int64_t c = 0; c < C; ++c) var += (at(x, n, c) - m) * (at(x, n, c) - m) / C;
    const double r = 1.0 / std::sqrt(var + kEps);
    const double tol = (C + 4) * kUnitRoundoff;  // C-term float32 sums and a sqrt
    EXPECT_NEAR(mean.f32()[n], m, tol * (std::fabs(m) + 4.0)) << "mean " << n;  // |x| <= 4
    EXPECT_NEAR(rstd.f32()[n], r, 4 * tol * r) << "rstd " << n;  // squared deviations: error doubles
    double y_mean = 0.0, y_var = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double expected = (at(x, n, c) - m) * r * g.f32()[c] + b.f32()[c];
      EXPECT_NEAR(at(y, n, c), expected, 8 * tol) << n << ", " << c;  // |y| <= ~5
      y_mean += at(y_unit, n, c) / static_cast<double>(C);
    }
    for (int64_t c = 0; c < C; ++c) y_var += (at(y_unit, n, c) - y_mean) * (at(y_unit, n, c) - y_mean) / C;
    EXPECT_NEAR(y_mean, 0.0, 1e-6) << "row " << n;
    EXPECT_NEAR(y_var, 1.0, 1e-4) << "row " << n;  // var / (var + eps): 1 up to eps / var ~ 1e-5
  }
}

TEST(Layernorm, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(54);
  const int64_t N = 3, C = 13;
  Tensor x = random_tensor({N, C}, rng);
  Tensor g = random_tensor({C}, rng, 0.5f, 1.5f), b = random_tensor({C}, rng);
  Tensor r = random_tensor({N, C}, rng);
  Tensor y = Tensor::zeros({N, C}), mean = Tensor::zeros({N}), rstd = Tensor::zeros({N});
  Tensor dx = Tensor::zeros({N, C}), dg = Tensor::zeros({C}), db = Tensor::zeros({C});
  layernorm_forward(y, mean, rstd, x, g, b, kEps);
  const Tensor mean_saved = mean.clone(), rstd_saved = rstd.clone();
  layernorm_backward(&dx, &dg, &db, r, x, g, mean_saved, rstd_saved);
  auto loss = [&] {
    layernorm_forward(y, mean, rstd, x, g, b, kEps);
    return weighted_sum(y, r);
  };
  expect_gradient("dx", x, dx, loss, kGradTol, kNotVacuous);
  expect_gradient("dg", g, dg, loss, kGradTol, kNotVacuous);
  expect_gradient("db", b, db, loss, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx, &dg, &db},
                              [&] { layernorm_backward(&dx, &dg, &db, r, x, g, mean_saved, rstd_saved); });
}

TEST(Layernorm, BackwardSkipsNullGradients) {
  std::mt19937 rng(55);
  Tensor x = random_tensor({2, 5}, rng), g = random_tensor({5}, rng), b = random_tensor({5}, rng);
  Tensor dy = random_tensor({2, 5}, rng);
  Tensor y = Tensor::zeros({2, 5}), mean = Tensor::zeros({2}), rstd = Tensor::zeros({2});
  layernorm_forward(y, mean, rstd, x, g, b, kEps);
  Tensor db_all = Tensor::zeros({5}), db_only = Tensor::zeros({5});
  Tensor dx = Tensor::zeros({2, 5}), dg = Tensor::zeros({5});
  layernorm_backward(&dx, &dg, &db_all, dy, x, g, mean, rstd);
  layernorm_backward(nullptr, nullptr, &db_only, dy, x, g, mean, rstd);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(db_only.f32()[i], db_all.f32()[i]);
}

// ---------------------------------------------------------------------------------------------
// cross-entropy
// ---------------------------------------------------------------------------------------------

TEST(CrossEntropy, ForwardIsMeanNegativeLogProbOverNonIgnoredRows) {
  std::mt19937 rng(61);
  const int64_t N = 6, V = 29;
  Tensor logits = random_tensor({N, V}, rng, -4.f, 4.f);
  for (int64_t c = 0; c < V; ++c) logits.f32()[5 * V + c] += 500.f;  // stable with large logits
  Tensor targets = Tensor::from_ints({N}, {3, -1, 0, 28, -1, 7});
  Tensor probs = nan_tensor({N, V});
  const float loss = cross_entropy_forward(probs, logits, targets);
  double expected = 0.0;
  int counted = 0;
  for (int64_t n = 0; n < N; ++n) {
    const std::vector<double> p = softmax_reference(logits, n);
    for (int64_t c = 0; c < V; ++c)  // probs are written for ignored rows too
      EXPECT_NEAR(at(probs, n, c), p[c], (V + 4) * kUnitRoundoff * p[c] + 1e-9) << n << ", " << c;
    const int32_t t = targets.i32()[n];
    if (t < 0) continue;
    expected += -std::log(p[t]);
    counted += 1;
  }
  expected /= counted;
  // Per-row float32 log-sum-exp of V terms: absolute error ~ (V + 4) u (|logit| ~500 in row 5).
  EXPECT_NEAR(loss, expected, (V + 4) * kUnitRoundoff * 500.0);
  EXPECT_TRUE(std::isfinite(loss));
}

TEST(CrossEntropy, AllRowsIgnoredGivesZeroLossAndNoGradient) {
  std::mt19937 rng(62);
  Tensor logits = random_tensor({3, 4}, rng);
  Tensor targets = Tensor::from_ints({3}, {-1, -1, -1});
  Tensor probs = Tensor::zeros({3, 4});
  EXPECT_EQ(cross_entropy_forward(probs, logits, targets), 0.f);
  Tensor dlogits = Tensor::zeros({3, 4});
  cross_entropy_backward(dlogits, probs, targets, 1.f);
  for (int64_t i = 0; i < dlogits.numel(); ++i) EXPECT_EQ(dlogits.f32()[i], 0.f);
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(63);
  const int64_t N = 4, V = 9;
  const float dloss = 0.7f;
  Tensor logits = random_tensor({N, V}, rng, -2.f, 2.f);
  Tensor targets = Tensor::from_ints({N}, {2, -1, 8, 0});
  Tensor probs = Tensor::zeros({N, V}), dlogits = Tensor::zeros({N, V});
  cross_entropy_forward(probs, logits, targets);
  const Tensor probs_saved = probs.clone();
  cross_entropy_backward(dlogits, probs_saved, targets, dloss);
  for (int64_t c = 0; c < V; ++c) EXPECT_EQ(at(dlogits, 1, c), 0.f) << "ignored row 1 got a gradient";
  // Here L = dloss * loss: the scalar the backward's dloss stands for.
  expect_gradient(
      "dlogits", logits, dlogits,
      [&] { return dloss * static_cast<double>(cross_entropy_forward(probs, logits, targets)); }, kGradTol,
      kNotVacuous);
  expect_backward_accumulates({&dlogits},
                              [&] { cross_entropy_backward(dlogits, probs_saved, targets, dloss); });
}

// ---------------------------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------------------------

TEST(Embedding, ForwardGathersTableRows) {
  std::mt19937 rng(71);
  const int64_t V = 6, d = 5;
  Tensor table = random_tensor({V, d}, rng);
  Tensor ids = Tensor::from_ints({4}, {5, 0, 5, 2});
  Tensor y = nan_tensor({4, d});
  embedding_forward(y, ids, table);
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(at(y, n, j), at(table, ids.i32()[n], j)) << n << ", " << j;
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(72);
  const int64_t V = 5, d = 4;
  Tensor table = random_tensor({V, d}, rng);
  Tensor ids = Tensor::from_ints({6}, {1, 3, 1, 0, 1, 4});  // id 1 three times: the adds must all land
  Tensor r = random_tensor({6, d}, rng);
  Tensor y = Tensor::zeros({6, d}), dtable = Tensor::zeros({V, d});
  embedding_backward(dtable, r, ids);
  for (int64_t j = 0; j < d; ++j) EXPECT_EQ(at(dtable, 2, j), 0.f) << "unused id 2 got a gradient";
  expect_gradient("dtable", table, dtable, [&] {
    embedding_forward(y, ids, table);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dtable}, [&] { embedding_backward(dtable, r, ids); });
}

// ---------------------------------------------------------------------------------------------
// row movement
// ---------------------------------------------------------------------------------------------

TEST(GatherRows, ForwardCopiesIndexedRows) {
  std::mt19937 rng(81);
  Tensor x = random_tensor({4, 7}, rng);
  Tensor index = Tensor::from_ints({5}, {3, 3, 0, 2, 1});
  Tensor y = nan_tensor({5, 7});
  gather_rows(y, x, index);
  for (int64_t m = 0; m < 5; ++m)
    for (int64_t c = 0; c < 7; ++c) EXPECT_EQ(at(y, m, c), at(x, index.i32()[m], c)) << m << ", " << c;
}

// bfloat16 rows (the MoE layer's in bf16 runs): the gather copies their bits, the scatter-add adds their
// exact float32 values into a float32 dx, as the float32 ops do on the same values.
TEST(GatherRows, Bf16RowsGatherBitwiseAndScatterAddIntoFloat32) {
  std::mt19937 rng(29);
  Tensor x;
  const Tensor x16 = random_bf16(x, {5, 3}, rng);
  const Tensor index = Tensor::from_ints({4}, {4, 0, 4, 2});
  Tensor y16 = Tensor::zeros({4, 3}, DType::BF16), y = Tensor::zeros({4, 3});
  gather_rows(y16, x16, index);
  gather_rows(y, x, index);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(float_from_bf16(y16.bf16()[i]), y.f32()[i]) << i;
  const Tensor dx0 = random_tensor({5, 3}, rng);
  Tensor dx16 = dx0.clone(), dx = dx0.clone();
  scatter_add_rows(dx16, y16, index);
  scatter_add_rows(dx, y, index);
  EXPECT_EQ(floats_of(dx16), floats_of(dx));
  EXPECT_NE(floats_of(dx), floats_of(dx0));
  Tensor dx_bf16 = Tensor::zeros({5, 3}, DType::BF16);
  EXPECT_CONTAINS(error_message([&] { scatter_add_rows(dx_bf16, y16, index); }),
                  "scatter_add_rows: dx has dtype bfloat16, expected float32");
  EXPECT_CONTAINS(error_message([&] { gather_rows(y, x16, index); }),
                  "gather_rows: y has dtype float32, expected bfloat16");
}

TEST(GatherRows, ScatterAddIsItsBackward) {
  std::mt19937 rng(82);
  Tensor x = random_tensor({4, 6}, rng);
  Tensor index = Tensor::from_ints({5}, {2, 0, 2, 2, 3});  // row 1 unused, row 2 thrice
  Tensor r = random_tensor({5, 6}, rng);
  Tensor y = Tensor::zeros({5, 6}), dx = Tensor::zeros({4, 6});
  scatter_add_rows(dx, r, index);
  for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(at(dx, 1, c), 0.f) << "unused row 1 got a gradient";
  expect_gradient("dx", x, dx, [&] {
    gather_rows(y, x, index);
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { scatter_add_rows(dx, r, index); });
}

TEST(Combine, ForwardIsWeightedSumOfSlotsSkippingMinusOne) {
  std::mt19937 rng(83);
  const int64_t M = 5, C = 6, T = 4, k = 2;
  Tensor rows = random_tensor({M, C}, rng);
  Tensor slot = Tensor::from_ints({T, k}, {0, 3, -1, 4, 2, 2, -1, -1});
  Tensor weights = random_tensor({T, k}, rng, 0.f, 1.f);
  Tensor y = nan_tensor({T, C});
  combine_forward(y, rows, slot, weights);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) {
      double expected = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t s = slot.i32()[t * k + j];
        if (s >= 0) expected += static_cast<double>(at(weights, t, j)) * at(rows, s, c);
      }
      EXPECT_NEAR(at(y, t, c), expected, 4 * k * kUnitRoundoff) << t << ", " << c;  // k products <= 1
    }
}

TEST(Combine, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(84);
  const int64_t M = 5, C = 6, T = 4, k = 2;
  Tensor rows = random_tensor({M, C}, rng);
  Tensor slot = Tensor::from_ints({T, k}, {0, 3, -1, 4, 2, 3, 1, -1});  // slot 3 used twice
  Tensor weights = random_tensor({T, k}, rng, 0.f, 1.f);
  Tensor r = random_tensor({T, C}, rng);
  Tensor y = Tensor::zeros({T, C}), drows = Tensor::zeros({M, C}), dweights = Tensor::zeros({T, k});
  combine_backward(&drows, &dweights, r, rows, slot, weights);
  EXPECT_EQ(at(dweights, 1, 0), 0.f);  // slot -1: no gradient
  EXPECT_EQ(at(dweights, 3, 1), 0.f);
  auto loss = [&] {
    combine_forward(y, rows, slot, weights);
    return weighted_sum(y, r);
  };
  expect_gradient("drows", rows, drows, loss, kGradTol, kNotVacuous);
  expect_gradient("dweights", weights, dweights, loss, kGradTol, kNotVacuous);
  expect_backward_accumulates({&drows, &dweights},
                              [&] { combine_backward(&drows, &dweights, r, rows, slot, weights); });
}

TEST(AddScaled, AddsAlphaTimesX) {
  Tensor y = Tensor::from({2, 2}, {1, 2, 3, 4});
  Tensor x = Tensor::from({2, 2}, {10, 20, 30, 40});
  add_scaled(y, x, -0.5f);
  const std::vector<float> expected = {-4, -8, -12, -16};
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(y.f32()[i], expected[i]) << i;  // exact in float32
}

// ---------------------------------------------------------------------------------------------
// router: top-k, jitter
// ---------------------------------------------------------------------------------------------

// The k experts of a row by a full stable sort of (score descending, id ascending): a different
// algorithm from the kernel's insertion into a list of k.
std::vector<int32_t> topk_reference(const Tensor& probs, const Tensor* bias, int64_t row, int64_t k) {
  const int64_t E = probs.dim(1);
  std::vector<int32_t> ids(E);
  std::iota(ids.begin(), ids.end(), 0);
  auto score = [&](int32_t e) { return at(probs, row, e) + (bias != nullptr ? bias->f32()[e] : 0.f); };
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return score(a) > score(b); });
  ids.resize(k);
  return ids;
}

TEST(Topk, ForwardMatchesSortedReferenceWithAndWithoutBias) {
  std::mt19937 rng(101);
  const int64_t T = 40, E = 9, k = 3;
  Tensor probs = random_tensor({T, E}, rng, 0.01f, 1.f);
  for (int64_t e = 0; e < E; ++e) probs.f32()[5 * E + e] = 0.25f;    // a row of ties: the lowest ids win
  probs.f32()[7 * E + 4] = probs.f32()[7 * E + 6] = 2.f;             // a tie for first place
  Tensor bias = random_tensor({E}, rng, -0.3f, 0.3f);
  for (bool with_bias : {false, true})
    for (bool renormalize : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "bias " << with_bias << ", renormalize " << renormalize);
      Tensor expert = Tensor::zeros({T, k}, DType::I32), weight = nan_tensor({T, k});
      topk_forward(expert, weight, probs, k, renormalize, with_bias ? &bias : nullptr);
      for (int64_t t = 0; t < T; ++t) {
        const std::vector<int32_t> want = topk_reference(probs, with_bias ? &bias : nullptr, t, k);
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) sum += at(probs, t, want[j]);
        for (int64_t j = 0; j < k; ++j) {
          ASSERT_EQ(expert.i32()[t * k + j], want[j]) << "row " << t << ", choice " << j;
          const double p = at(probs, t, want[j]);  // the unbiased probability, whatever the bias
          const double expected = renormalize ? p / sum : p;
          // A float32 sum of k terms and one division: (k + 1) u relative; raw weights are copies.
          EXPECT_NEAR(weight.f32()[t * k + j], expected, (k + 1) * kUnitRoundoff * expected) << t << ", " << j;
        }
      }
    }
  Tensor expert = Tensor::zeros({T, k}, DType::I32), weight = Tensor::zeros({T, k});
  topk_forward(expert, weight, probs, k, false);
  EXPECT_EQ(std::vector<int32_t>(expert.i32() + 5 * k, expert.i32() + 6 * k), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(std::vector<int32_t>(expert.i32() + 7 * k, expert.i32() + 7 * k + 2), (std::vector<int32_t>{4, 6}));
}

TEST(Topk, BackwardMatchesDoublePrecisionJacobian) {
  std::mt19937 rng(102);
  const int64_t T = 12, E = 7, k = 3;
  Tensor probs = random_tensor({T, E}, rng, 0.05f, 1.f);
  Tensor dweight = random_tensor({T, k}, rng);
  Tensor expert = Tensor::zeros({T, k}, DType::I32), weight = Tensor::zeros({T, k});
  for (bool renormalize : {false, true}) {
    SCOPED_TRACE(renormalize ? "renormalize" : "raw probabilities");
    topk_forward(expert, weight, probs, k, renormalize);
    Tensor dprobs = Tensor::zeros({T, E});
    dprobs.fill(0.25f);  // backward accumulates: the 0.25 must stay underneath
    topk_backward(dprobs, dweight, expert, weight, probs, renormalize);
    for (int64_t t = 0; t < T; ++t) {
      // w_j = p_j / S (S = sum over the chosen p): dw_j / dp_i = [i = j] / S - p_j / S^2, so
      // dL/dp_i = dweight_i / S - sum_j dweight_j p_j / S^2 (in double, from p rather than w).
      double S = 0.0, dot = 0.0, dot_abs = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        const double p = at(probs, t, expert.i32()[t * k + j]), dw = dweight.f32()[t * k + j];
        S += p;
        dot += dw * p;
        dot_abs += std::fabs(dw * p);
      }
      std::vector<double> expected(E, 0.25);
      for (int64_t j = 0; j < k; ++j) {
        const double dw = dweight.f32()[t * k + j];
        expected[expert.i32()[t * k + j]] += renormalize ? dw / S - dot / (S * S) : dw;
      }
      // float32: k-term sums, a division and the += : about (2k + 4) u of |dweight| / S + |dot| / S^2.
      const double tol = (2 * k + 4) * kUnitRoundoff * (1.0 / S + dot_abs / (S * S) + 0.25);
      for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(at(dprobs, t, e), expected[e], tol) << t << ", " << e;
    }
  }
}

TEST(Topk, ScaleMultipliesTheWeightsAndTheirGradient) {
  std::mt19937 rng(108);
  const int64_t T = 9, E = 6, k = 2;
  const float scale = 2.5f;  // DeepSeek-V3's routed scaling factor
  Tensor probs = random_tensor({T, E}, rng, 0.05f, 1.f), dweight = random_tensor({T, k}, rng);
  for (bool renormalize : {false, true}) {
    SCOPED_TRACE(renormalize ? "renormalize" : "raw scores");
    Tensor expert = Tensor::zeros({T, k}, DType::I32), weight = Tensor::zeros({T, k});
    Tensor unscaled_expert = Tensor::zeros({T, k}, DType::I32), unscaled = Tensor::zeros({T, k});
    topk_forward(expert, weight, probs, k, renormalize, nullptr, scale);
    topk_forward(unscaled_expert, unscaled, probs, k, renormalize);
    EXPECT_EQ(ints_of(expert), ints_of(unscaled_expert)) << "the scale changes the weights, never the choice";
    for (int64_t i = 0; i < T * k; ++i)  // one more float32 product: u
      EXPECT_NEAR(weight.f32()[i], scale * unscaled.f32()[i], kUnitRoundoff * scale * unscaled.f32()[i]) << i;
    Tensor dprobs = Tensor::zeros({T, E});
    topk_backward(dprobs, dweight, expert, weight, probs, renormalize, scale);
    for (int64_t t = 0; t < T; ++t) {
      // w_j = a p_j / S: dL/dp_i = a (dweight_i / S - sum_j dweight_j p_j / S^2), or a dweight_i raw.
      double S = 0.0, dot = 0.0, dot_abs = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        const double p = at(probs, t, expert.i32()[t * k + j]), dw = dweight.f32()[t * k + j];
        S += p;
        dot += dw * p;
        dot_abs += std::fabs(dw * p);
      }
      std::vector<double> expected(E, 0.0);
      for (int64_t j = 0; j < k; ++j) {
        const double dw = dweight.f32()[t * k + j];
        expected[expert.i32()[t * k + j]] += scale * (renormalize ? dw / S - dot / (S * S) : dw);
      }
      // As Topk.BackwardMatchesDoublePrecisionJacobian, with one more product by a.
      const double tol = (2 * k + 5) * kUnitRoundoff * scale * (1.0 / S + dot_abs / (S * S) + 1.0);
      for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(at(dprobs, t, e), expected[e], tol) << t << ", " << e;
    }
    expect_backward_accumulates({&dprobs}, [&] {
      topk_backward(dprobs, dweight, expert, weight, probs, renormalize, scale);
    });
  }
}

// A row's group scores, the plain way: each group's selection scores sorted (descending), the score
// their first one or the sum of their first two.
std::vector<float> group_scores_reference(const Tensor& probs, const Tensor* bias, int64_t row, int64_t groups,
                                          int64_t terms) {
  const int64_t n = probs.dim(1) / groups;
  std::vector<float> score(groups);
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<float> s;
    for (int64_t e = g * n; e < (g + 1) * n; ++e) s.push_back(at(probs, row, e) + (bias ? bias->f32()[e] : 0.f));
    std::sort(s.begin(), s.end(), std::greater<float>());
    score[g] = terms == 2 && n > 1 ? s[0] + s[1] : s[0];
  }
  return score;
}

// The groups a row keeps: the first top_groups of a stable sort by score (ties: the lower id first).
std::vector<bool> kept_groups_reference(const std::vector<float>& score, int64_t top_groups) {
  std::vector<int64_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  std::vector<bool> kept(score.size(), false);
  for (int64_t i = 0; i < top_groups; ++i) kept[order[i]] = true;
  return kept;
}

TEST(GroupLimit, KeepsTheTopGroupsOfTheSortedReferenceIncludingTies) {
  // Scores and biases on a grid of 1/8 and 1/16: sums are exact, so ties within and between groups are
  // common, and the reference's float sums equal the kernel's bit for bit.
  std::mt19937 rng(104);
  const int64_t T = 50, E = 12;
  Tensor probs = Tensor::empty({T, E}), bias = Tensor::empty({E});
  for (int64_t i = 0; i < T * E; ++i) probs.f32()[i] = static_cast<float>(rng() % 8 + 1) / 8;
  for (int64_t e = 0; e < E; ++e) bias.f32()[e] = (static_cast<float>(rng() % 5) - 2) / 16;
  for (int64_t e = 0; e < E; ++e) probs.f32()[3 * E + e] = 0.5f;  // a row of ties: the lowest groups win
  int64_t boundary_ties = 0;  // rows with a kept and a dropped group of equal score: the tie rule decided
  for (int64_t groups : {1, 2, 3, 4, 6, 12})
    for (int64_t top_groups = 1; top_groups <= groups; ++top_groups)
      for (int64_t terms : {1, 2})
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(::testing::Message() << "groups " << groups << ", top " << top_groups << ", terms " << terms
                                            << ", bias " << with_bias);
          const Tensor* b = with_bias ? &bias : nullptr;
          Tensor limited = nan_tensor({T, E});
          group_limit_forward(limited, probs, b, groups, top_groups, terms);
          for (int64_t t = 0; t < T; ++t) {
            const std::vector<float> score = group_scores_reference(probs, b, t, groups, terms);
            const std::vector<bool> kept = kept_groups_reference(score, top_groups);
            for (int64_t e = 0; e < E; ++e) {
              const float want = kept[e / (E / groups)] ? at(probs, t, e) : -std::numeric_limits<float>::infinity();
              ASSERT_EQ(at(limited, t, e), want) << "row " << t << ", expert " << e;
            }
            bool tie = false;
            for (int64_t g = 0; g < groups; ++g)
              for (int64_t h = 0; h < groups; ++h) tie |= kept[g] && !kept[h] && score[g] == score[h];
            boundary_ties += tie;
          }
        }
  EXPECT_GT(boundary_ties, 100) << "the grid should make many ties at the boundary of the kept groups";
  // The row of equal scores keeps groups 0 .. top_groups - 1.
  Tensor limited = nan_tensor({T, E});
  group_limit_forward(limited, probs, nullptr, 4, 2, 2);
  for (int64_t e = 0; e < E; ++e) EXPECT_EQ(std::isinf(at(limited, 3, e)), e >= 6) << "expert " << e;
}

TEST(GroupLimit, Top2SumAndMaxChooseDifferentGroupsAndTheLowerIdWinsATie) {
  // Groups of 2: A = {0.5, 0.0625} (sum 0.5625, max 0.5), B = {0.375, 0.375} (sum 0.75, max 0.375),
  // C = {0.125, 0.5} (sum 0.625, max 0.5: A's), D = {0.125, 0.625} (sum 0.75: B's). All sums exact.
  Tensor probs = Tensor::from({1, 8}, {0.5f, 0.0625f, 0.375f, 0.375f, 0.125f, 0.5f, 0.125f, 0.625f});
  auto kept = [&](int64_t top_groups, int64_t terms, const Tensor* bias) {
    Tensor limited = nan_tensor({1, 8});
    group_limit_forward(limited, probs, bias, 4, top_groups, terms);
    std::vector<int> groups;
    for (int64_t g = 0; g < 4; ++g)
      if (!std::isinf(limited.f32()[2 * g])) groups.push_back(static_cast<int>(g));
    return groups;
  };
  EXPECT_EQ(kept(1, 2, nullptr), (std::vector<int>{1}));     // B and D tie at 0.75: B, the lower id
  EXPECT_EQ(kept(2, 2, nullptr), (std::vector<int>{1, 3}));  // then D
  EXPECT_EQ(kept(1, 1, nullptr), (std::vector<int>{3}));     // D's 0.625 is the highest max
  EXPECT_EQ(kept(2, 1, nullptr), (std::vector<int>{0, 3}));  // A and C tie at 0.5: A
  // The selection bias enters the group score: +0.25 on expert 1 lifts A's sum to 0.8125.
  Tensor bias = Tensor::from({8}, {0.f, 0.25f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f});
  EXPECT_EQ(kept(1, 2, &bias), (std::vector<int>{0}));
  // topk on the limited scores chooses inside the kept groups, by the same probs and bias.
  Tensor limited = nan_tensor({1, 8}), expert = Tensor::zeros({1, 2}, DType::I32), weight = nan_tensor({1, 2});
  group_limit_forward(limited, probs, nullptr, 4, 2, 2);
  topk_forward(expert, weight, limited, 2, true);
  EXPECT_EQ(ints_of(expert), (std::vector<int32_t>{7, 2}));  // 0.625 (D), then 0.375 (B, lower id)
  EXPECT_EQ(weight.f32()[0], 0.625f);  // renormalised over 0.625 + 0.375 = 1: exact
  EXPECT_EQ(weight.f32()[1], 0.375f);
}

TEST(Jitter, ForwardNoiseIsUniformOfTheGlobalCounterAndScalesX) {
  std::mt19937 rng(103);
  const int64_t T = 16, d = 10;
  const float eps = 0.125f;
  const uint64_t stream = stream_id(5, "jitter.test"), offset = 1000;
  Tensor x = random_tensor({T, d}, rng, -2.f, 2.f);
  Tensor y = nan_tensor({T, d}), noise = nan_tensor({T, d});
  jitter_forward(y, noise, x, eps, stream, offset);
  double noise_sum = 0.0;
  for (int64_t i = 0; i < T * d; ++i) {
    const double expected = (1.0 - eps) + 2.0 * eps * uniform01(stream, offset + i);  // in double
    // 1 - eps and 1 + eps are exact in float32; (hi - lo) * U and the add round once each: 2u.
    EXPECT_NEAR(noise.f32()[i], expected, 2 * kUnitRoundoff * expected) << i;
    EXPECT_GE(noise.f32()[i], 1.f - eps);
    EXPECT_LT(noise.f32()[i], 1.f + eps);
    EXPECT_NEAR(y.f32()[i], static_cast<double>(x.f32()[i]) * expected,
                4 * kUnitRoundoff * std::fabs(x.f32()[i] * expected)) << i;  // the noise's 2u, and one product
    noise_sum += noise.f32()[i];
  }
  // 160 U(0.875, 1.125) values: mean 1, standard deviation of the mean 0.072 / sqrt(160) = 0.0057.
  EXPECT_NEAR(noise_sum / (T * d), 1.0, 0.03);
  // Rows [4, 9) with the offset of their first element get the same noise: a token's noise is fixed
  // by its global index. And the values are fill_uniform's, bit for bit (the router's noise before).
  Tensor part_y = Tensor::zeros({5, d}), part_noise = Tensor::zeros({5, d});
  jitter_forward(part_y, part_noise, x.rows(4, 9), eps, stream, offset + 4 * d);
  Tensor filled = Tensor::zeros({T, d});
  fill_uniform(filled, 1.f - eps, 1.f + eps, stream, offset);
  for (int64_t i = 0; i < 5 * d; ++i) EXPECT_EQ(part_noise.f32()[i], noise.f32()[4 * d + i]) << i;
  for (int64_t i = 0; i < T * d; ++i) EXPECT_EQ(noise.f32()[i], filled.f32()[i]) << i;
}

TEST(Jitter, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(104);
  const int64_t T = 4, d = 9;
  const uint64_t stream = stream_id(6, "jitter.fd");
  Tensor x = random_tensor({T, d}, rng), r = random_tensor({T, d}, rng);
  Tensor y = Tensor::zeros({T, d}), noise = Tensor::zeros({T, d}), dx = Tensor::zeros({T, d});
  jitter_forward(y, noise, x, 0.3f, stream, 0);
  const Tensor noise_saved = noise.clone();
  jitter_backward(dx, r, noise_saved);
  expect_gradient("dx", x, dx, [&] {
    jitter_forward(y, noise, x, 0.3f, stream, 0);  // the same noise: it depends only on the counters
    return weighted_sum(y, r);
  }, kGradTol, kNotVacuous);
  expect_backward_accumulates({&dx}, [&] { jitter_backward(dx, r, noise_saved); });
}

// ---------------------------------------------------------------------------------------------
// router: expert-choice selection
// ---------------------------------------------------------------------------------------------

// Expert e's C tokens by repeated scans (a selection sort): each scan takes the highest score not yet
// taken, the first such token on a tie (strict >). A different algorithm from the kernels' sort and ranks.
std::vector<int32_t> expert_choice_reference(const Tensor& scores, int64_t e, int64_t C) {
  const int64_t T = scores.dim(0);
  std::vector<bool> taken(T, false);
  std::vector<int32_t> out;
  for (int64_t c = 0; c < C; ++c) {
    int64_t best = -1;
    for (int64_t t = 0; t < T; ++t)
      if (!taken[t] && (best < 0 || at(scores, t, e) > at(scores, best, e))) best = t;
    taken[best] = true;
    out.push_back(static_cast<int32_t>(best));
  }
  return out;
}

TEST(ExpertChoiceTopk, MatchesTheSelectionSortReferenceWithTiesForEveryC) {
  std::mt19937 rng(109);
  const int64_t T = 30, E = 5;
  Tensor scores = random_tensor({T, E}, rng, 0.f, 1.f);
  for (int64_t i = 0; i < T * E; ++i) scores.f32()[i] = std::round(scores.f32()[i] * 6.f) / 6.f;  // many ties
  for (int64_t t = 0; t < T; ++t) scores.f32()[t * E + 2] = 0.5f;  // a column of ties: tokens in index order
  for (int64_t C : {0, 1, 7, 29, 30}) {  // C = T: every token, best first
    SCOPED_TRACE("C = " + std::to_string(C));
    Tensor token = Tensor::from_ints({E, C}, std::vector<int32_t>(E * C, -1));
    expert_choice_topk(token, scores);
    for (int64_t e = 0; e < E; ++e)
      EXPECT_EQ(std::vector<int32_t>(token.i32() + e * C, token.i32() + (e + 1) * C),
                expert_choice_reference(scores, e, C))
          << "expert " << e;
    std::vector<int32_t> first(C);
    std::iota(first.begin(), first.end(), 0);
    EXPECT_EQ(std::vector<int32_t>(token.i32() + 2 * C, token.i32() + 3 * C), first) << "ties go to lower tokens";
  }
  Tensor too_many = Tensor::zeros({E, T + 1}, DType::I32), wrong_experts = Tensor::zeros({E - 1, 3}, DType::I32);
  EXPECT_CONTAINS(error_message([&] { expert_choice_topk(too_many, scores); }), "expert_choice_topk",
                  "token has shape (5, 31)", "C <= T = 30");
  EXPECT_CONTAINS(error_message([&] { expert_choice_topk(wrong_experts, scores); }), "token has shape (4, 3)",
                  "expected (E = 5");
}

TEST(StaticRouteForward, LooksUpEachTokensRowWithWeightsOneOverK) {
  const Tensor routes = Tensor::from_ints({4, 3}, {0, 1, 2, 3, 2, 1, 1, 3, 0, 2, 0, 3});  // (V = 4, k = 3)
  const std::vector<int32_t> ids = {2, 0, 3, 3, 1};
  Tensor expert = Tensor::from_ints({5, 3}, std::vector<int32_t>(15, -1)), weight = Tensor::zeros({5, 3});
  static_route_forward(expert, weight, routes, Tensor::from_ints({5}, ids));
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_EQ(expert.i32()[t * 3 + j], routes.i32()[ids[t] * 3 + j]) << "token " << t << " choice " << j;
      EXPECT_EQ(weight.f32()[t * 3 + j], 1.0f / 3.0f);
    }
  Tensor none = Tensor::zeros({0, 3}, DType::I32), none_w = Tensor::zeros({0, 3});
  EXPECT_NO_THROW(static_route_forward(none, none_w, routes, Tensor::zeros({0}, DType::I32)));
  const Tensor bad_ids = Tensor::from_ints({5}, {0, 1, 4, 0, 0});
  EXPECT_CONTAINS(error_message([&] { static_route_forward(expert, weight, routes, bad_ids); }),
                  "static_route_forward", "token_ids[2] = 4 is out of range, expected [0, 4)");
  Tensor wrong = Tensor::zeros({5, 2}, DType::I32);
  EXPECT_CONTAINS(error_message([&] { static_route_forward(wrong, weight, routes, Tensor::from_ints({5}, ids)); }),
                  "static_route_forward", "expert");
}

// ---------------------------------------------------------------------------------------------
// router: auxiliary losses
// ---------------------------------------------------------------------------------------------

TEST(LoadBalance, SumsMatchReferenceCounts) {
  std::mt19937 rng(105);
  const int64_t T = 33, E = 6, k = 2;
  Tensor probs = random_tensor({T, E}, rng, 0.f, 1.f);
  std::uniform_int_distribution<int32_t> any_expert(0, E - 1);
  std::vector<int32_t> ids(T * k);
  for (int32_t& id : ids) id = any_expert(rng);
  const Tensor expert = Tensor::from_ints({T, k}, ids);
  std::vector<double> prob_sum = {7.0}, choice_count;  // stale contents must be replaced
  load_balance_sums(prob_sum, choice_count, probs, expert);
  ASSERT_EQ(prob_sum.size(), static_cast<size_t>(E));
  ASSERT_EQ(choice_count.size(), static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    double column = 0.0;
    for (int64_t t = T - 1; t >= 0; --t) column += at(probs, t, e);  // the other order
    // Two double sums of T float32 values in [0, 1]: each within T 2^-53 |sum| of the exact value.
    EXPECT_NEAR(prob_sum[e], column, 2 * T * DBL_EPSILON * column) << e;
    EXPECT_EQ(choice_count[e], static_cast<double>(std::count(ids.begin(), ids.end(), e))) << e;  // exact counts
  }
}

TEST(LoadBalance, BackwardAddsTheGradientOfTheLoss) {
  std::mt19937 rng(106);
  const int64_t T = 5, E = 4;
  const std::vector<double> counts = {3, 0, 5, 2};
  const double num_choices = 10, num_tokens = 5, coeff = 0.3, dloss = 1.7;
  // L = dloss coeff E sum_e f_e (sum_t p_te) / num_tokens, f_e = counts_e / num_choices: linear in p.
  Tensor probs = random_tensor({T, E}, rng, 0.f, 1.f);
  auto loss = [&] {
    double sum = 0.0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) sum += counts[e] / num_choices * at(probs, t, e);
    return dloss * coeff * E * sum / num_tokens;
  };
  Tensor dprobs = Tensor::zeros({T, E});
  dprobs.fill(-0.5f);  // backward accumulates: the -0.5 must stay underneath
  load_balance_backward(dprobs, counts, num_choices, num_tokens, coeff, dloss);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      const double expected = dloss * coeff * E * counts[e] / num_choices / num_tokens;
      // The gradient is rounded to float32 once, then added to -0.5: 2u of |the sum| + |expected|.
      EXPECT_NEAR(at(dprobs, t, e), expected - 0.5, 2 * kUnitRoundoff * (0.5 + expected)) << t << ", " << e;
    }
  // And against finite differences of L, which is linear in p: only float32 rounding of p +- h
  // (the step taken is measured) and the 2u above remain.
  Tensor grad = Tensor::zeros({T, E});
  load_balance_backward(grad, counts, num_choices, num_tokens, coeff, dloss);
  expect_gradient("dprobs", probs, grad, loss, kGradTol, kNotVacuous);
}

TEST(LoadBalance, GroupsSumTheirOwnRowsAndScaleTheGradientByOneOverG) {
  std::mt19937 rng(109);
  const int64_t T = 12, E = 5, k = 2, G = 3, rows = T / G;
  Tensor probs = random_tensor({T, E}, rng, 0.f, 1.f);
  std::uniform_int_distribution<int32_t> any_expert(0, E - 1);
  std::vector<int32_t> ids(T * k);
  for (int32_t& id : ids) id = any_expert(rng);
  const Tensor expert = Tensor::from_ints({T, k}, ids);
  std::vector<double> prob_sum, choice_count;
  load_balance_sums(prob_sum, choice_count, probs, expert, G);
  ASSERT_EQ(prob_sum.size(), static_cast<size_t>(G * E));
  ASSERT_EQ(choice_count.size(), static_cast<size_t>(G * E));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t e = 0; e < E; ++e) {
      double column = 0.0, count = 0.0;
      for (int64_t t = g * rows; t < (g + 1) * rows; ++t) {
        column += at(probs, t, e);
        for (int64_t j = 0; j < k; ++j) count += ids[t * k + j] == e;
      }
      EXPECT_NEAR(prob_sum[g * E + e], column, 2 * rows * DBL_EPSILON * column) << g << ", " << e;
      EXPECT_EQ(choice_count[g * E + e], count) << g << ", " << e;
    }
  // L = dloss coeff E (1/G) sum_g sum_e f_ge P_ge with P_ge = (sum over group g's rows of p) / rows.
  const double coeff = 0.3, dloss = 1.7, num_choices = rows * k;
  auto loss = [&] {
    double sum = 0.0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e) sum += choice_count[t / rows * E + e] / num_choices * at(probs, t, e) / rows;
    return dloss * coeff * E * sum / G;
  };
  Tensor grad = Tensor::zeros({T, E});
  load_balance_backward(grad, choice_count, num_choices, rows, coeff, dloss);
  expect_gradient("dprobs", probs, grad, loss, kGradTol, kNotVacuous);
  expect_backward_accumulates({&grad}, [&] {
    load_balance_backward(grad, choice_count, num_choices, rows, coeff, dloss);
  });
}

// log(sum_e exp(x_e)) of one row, in double without subtracting the max (|x| <= ~8 here).
double logsumexp_reference(const Tensor& x, int64_t row) {
  double sum = 0.0;
  for (int64_t c = 0; c < x.dim(1); ++c) sum += std::exp(static_cast<double>(at(x, row, c)));
  return std::log(sum);
}

TEST(ZLoss, ForwardIsCoeffTimesMeanSquaredLogSumExp) {
  std::mt19937 rng(107);
  const int64_t T = 11, E = 8;
  const double coeff = 0.002;
  Tensor logits = random_tensor({T, E}, rng, -4.f, 4.f);
  double sum = 0.0;
  for (int64_t t = 0; t < T; ++t) sum += logsumexp_reference(logits, t) * logsumexp_reference(logits, t);
  // The kernel subtracts the float32 row max first: each exponent x - max (|.| <= 8) is rounded to
  // float32, 8u = 5e-7 absolute, so each lse is within ~5e-7 of the reference and lse^2 within
  // 2 * 5e-7 / |lse| relative (|lse| ~ 2..5 for these rows): 1e-6, while a wrong mean, square or
  // coefficient is off by O(1).
  EXPECT_NEAR(z_loss_forward(logits, coeff, T), coeff * sum / T, 1e-6 * coeff * sum / T);
  EXPECT_NEAR(z_loss_forward(logits, coeff, 4.0 * T), coeff * sum / (4.0 * T), 1e-6 * coeff * sum / (4.0 * T));
  EXPECT_EQ(z_loss_forward(logits, coeff, 0.0), 0.0) << "no tokens to average over";
}

TEST(ZLoss, BackwardMatchesFiniteDifferences) {
  std::mt19937 rng(108);
  const int64_t T = 4, E = 6;
  const double coeff = 0.5, mean_over = 2.0, dloss = 1.3;  // gradients O(0.1..1)
  Tensor logits = random_tensor({T, E}, rng, -2.f, 2.f);
  Tensor probs = Tensor::zeros({T, E}), dlogits = Tensor::zeros({T, E});
  softmax_forward(probs, logits);
  z_loss_backward(dlogits, logits, probs, coeff, mean_over, dloss);
  expect_gradient("dlogits", logits, dlogits, [&] { return dloss * z_loss_forward(logits, coeff, mean_over); },
                  kGradTol, kNotVacuous);
  expect_backward_accumulates({&dlogits}, [&] { z_loss_backward(dlogits, logits, probs, coeff, mean_over, dloss); });
  Tensor untouched = Tensor::zeros({T, E});
  z_loss_backward(untouched, logits, probs, coeff, 0.0, dloss);
  EXPECT_EQ(max_abs(untouched), 0.0) << "mean_over = 0 adds nothing";
}

// ---------------------------------------------------------------------------------------------
// index tensors
// ---------------------------------------------------------------------------------------------

TEST(IndexRamp, FillsStartPlusStepTimesNModPeriod) {
  Tensor positions = Tensor::zeros({7}, DType::I32);
  index_ramp(positions, 0, 1, 3);
  EXPECT_EQ(ints_of(positions), (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 0}));
  Tensor rows = Tensor::zeros({4}, DType::I32);
  index_ramp(rows, 2, 3, 4);
  EXPECT_EQ(ints_of(rows), (std::vector<int32_t>{2, 5, 8, 11}));
  Tensor down = Tensor::zeros({3}, DType::I32);
  index_ramp(down, 10, -4, 100);
  EXPECT_EQ(ints_of(down), (std::vector<int32_t>{10, 6, 2}));
  Tensor none = Tensor::zeros({0}, DType::I32);
  index_ramp(none, 0, 1, 1);  // nothing to write, nothing to check
  // The largest int32 values are fine; one past them is not.
  Tensor top = Tensor::zeros({2}, DType::I32);
  index_ramp(top, INT32_MAX - 1, 1, 2);
  EXPECT_EQ(ints_of(top), (std::vector<int32_t>{INT32_MAX - 1, INT32_MAX}));
  EXPECT_CONTAINS(error_message([&] { index_ramp(top, INT32_MAX, 1, 2); }), "index_ramp", "int32 range");
  EXPECT_CONTAINS(error_message([&] { index_ramp(top, 0, int64_t{1} << 40, 2); }), "index_ramp", "int32 range");
  EXPECT_CONTAINS(error_message([&] { index_ramp(top, 0, 1, 0); }), "index_ramp: period = 0 must be >= 1");
}

// ---------------------------------------------------------------------------------------------
// optimizer step (core/optim_ops.h)
// ---------------------------------------------------------------------------------------------

// Weights and moments in double alongside the float32 op, over a few steps. Each step rounds every
// w, m, v, buf (all |.| < 3) to float32, <= 1.8e-7 each, and momentum carries earlier roundings on
// (x 0.9 per step); over 3 steps the drift stays below ~7e-7. A wrong formula (a missing bias
// correction, decay or momentum term) moves a weight by lr wd |w| = 1e-3 |w| or more.
constexpr double kUpdateTol = 1e-6;

TEST(AdamwUpdate, MatchesDoublePrecisionReferenceOverSteps) {
  std::mt19937 rng(109);
  const Shape shape = {5, 7};
  Tensor w = random_tensor(shape, rng, -2.f, 2.f), m = Tensor::zeros(shape), v = Tensor::zeros(shape);
  std::vector<double> rw(w.f32(), w.f32() + w.numel()), rm(w.numel(), 0.0), rv(w.numel(), 0.0);
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  for (int step = 1; step <= 3; ++step) {
    const Tensor g = random_tensor(shape, rng);
    const double c1 = 1.0 - std::pow(static_cast<double>(b1), step);
    const double c2 = 1.0 - std::pow(static_cast<double>(b2), step);
    adamw_update(w, m, v, g, AdamWScalars{lr, b1, b2, static_cast<float>(c1), static_cast<float>(c2), eps, wd});
    for (int64_t i = 0; i < w.numel(); ++i) {
      const double gi = g.f32()[i];
      rm[i] = b1 * rm[i] + (1.0 - b1) * gi;
      rv[i] = b2 * rv[i] + (1.0 - b2) * gi * gi;
      rw[i] -= lr * (rm[i] / c1 / (std::sqrt(rv[i] / c2) + eps) + wd * rw[i]);
      ASSERT_NEAR(m.f32()[i], rm[i], kUpdateTol) << "step " << step << ", m[" << i << "]";
      ASSERT_NEAR(v.f32()[i], rv[i], kUpdateTol) << "step " << step << ", v[" << i << "]";
      ASSERT_NEAR(w.f32()[i], rw[i], kUpdateTol) << "step " << step << ", w[" << i << "]";
    }
  }
}

TEST(SgdUpdate, MatchesDoublePrecisionReferenceOverSteps) {
  std::mt19937 rng(110);
  const Shape shape = {3, 2, 4};
  Tensor w = random_tensor(shape, rng, -2.f, 2.f), buf = Tensor::zeros(shape);
  std::vector<double> rw(w.f32(), w.f32() + w.numel()), rbuf(w.numel(), 0.0);
  const float lr = 1e-2f, momentum = 0.9f, wd = 0.1f;
  for (int step = 1; step <= 3; ++step) {
    const Tensor g = random_tensor(shape, rng);
    sgd_update(w, buf, g, lr, momentum, wd);
    for (int64_t i = 0; i < w.numel(); ++i) {
      rbuf[i] = momentum * rbuf[i] + g.f32()[i];
      rw[i] -= lr * (rbuf[i] + wd * rw[i]);
      ASSERT_NEAR(buf.f32()[i], rbuf[i], kUpdateTol) << "step " << step << ", buf[" << i << "]";
      ASSERT_NEAR(w.f32()[i], rw[i], kUpdateTol) << "step " << step << ", w[" << i << "]";
    }
  }
}

TEST(SumOfSquares, MatchesExactAndReversedSums) {
  EXPECT_EQ(sum_of_squares(Tensor::from({3}, {3.f, -4.f, 12.f})), 169.0) << "exact: 9 + 16 + 144";
  EXPECT_EQ(sum_of_squares(Tensor::zeros({0, 4})), 0.0);
  std::mt19937 rng(111);
  const Tensor x = random_tensor({50, 40}, rng, -3.f, 3.f);
  double reversed = 0.0;
  for (int64_t i = x.numel() - 1; i >= 0; --i) reversed += static_cast<double>(x.f32()[i]) * x.f32()[i];
  // Squares of float32 values are exact in double; two orders of a 2000-term double sum of positive
  // terms differ by at most 2 * 2000 * 2^-53 relative.
  EXPECT_NEAR(sum_of_squares(x), reversed, 2 * x.numel() * DBL_EPSILON * reversed);
}

// The gradient norm must be reproducible bit for bit (reruns, ep = 1/2/4 comparisons): the order of
// the additions may not depend on how many threads share the work. A length past the OpenMP
// threshold that no power of two divides, so the last chunk and lanes are partial.
TEST(SumOfSquares, SameBitsForAnyThreadCount) {
  std::mt19937 rng(113);
  const Tensor x = random_tensor({3 * cpu::kMinParallelElements + 37}, rng, -3.f, 3.f);
  long double exact = 0.0L;  // 64-bit mantissa: the reference's own rounding is 2^11 times smaller
  for (int64_t i = 0; i < x.numel(); ++i) exact += static_cast<long double>(x.f32()[i]) * x.f32()[i];
  const int threads = num_threads();
  set_num_threads(1);
  const double one_thread = sum_of_squares(x);
  for (int n : {2, 3}) {
    set_num_threads(n);
    EXPECT_EQ(sum_of_squares(x), one_thread) << n << " threads";
  }
  set_num_threads(threads);
  // Exact squares; any order of n positive double additions is within n * 2^-53 relative (DBL_EPSILON
  // is 2^-52: a margin of 2).
  EXPECT_NEAR(one_thread, static_cast<double>(exact), x.numel() * DBL_EPSILON * one_thread);
}

TEST(ScaleInPlace, MultipliesInDoubleAndRoundsOnce) {
  std::mt19937 rng(112);
  Tensor x = random_tensor({6, 9}, rng, -5.f, 5.f);
  const Tensor before = x.clone();
  const double factor = 0.3713;
  scale_in_place(x, factor);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double exact = static_cast<double>(before.f32()[i]) * factor;
    EXPECT_NEAR(x.f32()[i], exact, kUnitRoundoff * std::fabs(exact)) << i;  // one rounding to float32
  }
  Tensor halves = Tensor::from({2}, {3.f, -1.f});
  scale_in_place(halves, 0.5);
  EXPECT_EQ(floats_of(halves), (std::vector<float>{1.5f, -0.5f}));
}

TEST(SelectionBiasUpdate, StepsEachExpertTowardTheMeanLoad) {
  // Loads 1, 5, 3, 3: mean 3, so +rate, -rate, 0, 0.
  Tensor bias = Tensor::from({4}, {0.5f, 0.5f, -0.25f, 0.f});
  selection_bias_update(bias, {1, 5, 3, 3}, 0.125);
  EXPECT_EQ(floats_of(bias), (std::vector<float>{0.625f, 0.375f, -0.25f, 0.f}));
  EXPECT_CONTAINS(error_message([&] { selection_bias_update(bias, {1, 2}, 0.1); }),
                  "selection_bias_update: 2 loads for bias (4)");
  EXPECT_CONTAINS(error_message([&] { selection_bias_update(bias, {1, 2, 3, 4}, -0.1); }),
                  "selection_bias_update: rate = -0.1 must be finite and >= 0");
}

TEST(FirstNonfinite, FindsTheFirstNanOrInfinityInIndexOrder) {
  Tensor x = Tensor::zeros({3, 4});
  EXPECT_EQ(first_nonfinite(x), -1);
  EXPECT_EQ(first_nonfinite(Tensor::zeros({0})), -1);
  x.f32()[9] = std::nanf("");
  x.f32()[6] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(first_nonfinite(x), 6);
  EXPECT_CONTAINS(error_message([&] { first_nonfinite(Tensor::zeros({2}, DType::I32)); }),
                  "first_nonfinite: x has dtype int32");
}

// ---------------------------------------------------------------------------------------------
// OpenMP path
// ---------------------------------------------------------------------------------------------

// The tests above use small tensors, which the kernels run on one thread (core/cpu/omp_threshold.h).
// Here each op runs once over N x C = 65536 elements (the OpenMP path) and once per block of 8 rows
// (the one-thread path). Every row is computed independently with the same arithmetic, so the
// results must agree bit for bit; a race or a wrong row offset in a parallel loop would not.
TEST(ParallelPath, MatchesBlockwiseOneThreadResults) {
  constexpr int64_t N = 512, C = 128, kBlock = 8, V = 300;
  static_assert(N * C / 2 >= cpu::kMinParallelElements, "the full tensors must take the OpenMP path");
  static_assert(kBlock * C < cpu::kMinParallelElements, "a block must take the one-thread path");
  if (num_threads() < 2) set_num_threads(2);  // an OpenMP team of one would make this check vacuous
  std::mt19937 rng(91);
  Tensor x = random_tensor({N, C}, rng, -3.f, 3.f), dy = random_tensor({N, C}, rng);
  Tensor dy_half = random_tensor({N, C / 2}, rng);
  Tensor g = random_tensor({C}, rng, 0.5f, 1.5f), b = random_tensor({C}, rng);
  Tensor table = random_tensor({V, C}, rng);
  std::uniform_int_distribution<int32_t> any_row(0, V - 1), target_or_ignored(-1, C - 1);
  std::vector<int32_t> ids_values(N), target_values(N), slot_values(N * 2);
  for (int32_t& id : ids_values) id = any_row(rng);
  for (int32_t& t : target_values) t = target_or_ignored(rng);
  for (int32_t& s : slot_values) s = any_row(rng) - 1;  // -1 (skipped) to V - 2
  Tensor ids = Tensor::from_ints({N}, ids_values), targets = Tensor::from_ints({N}, target_values);
  Tensor slot = Tensor::from_ints({N, 2}, slot_values);
  Tensor weights = random_tensor({N, 2}, rng);

  // Saved forward results the backwards need, computed once over all rows.
  Tensor probs = Tensor::zeros({N, C}), rstd = Tensor::zeros({N}), mean = Tensor::zeros({N});
  Tensor scratch = Tensor::zeros({N, C});
  softmax_forward(probs, x);
  layernorm_forward(scratch, mean, rstd, x, g, b, kEps);
  Tensor rms_rstd = Tensor::zeros({N});
  rmsnorm_forward(scratch, rms_rstd, x, g, kEps);

  // Runs op(out rows [begin, end), begin, end) over all rows at once and block by block.
  auto expect_same = [&](const char* name, const Shape& out_shape,
                         const std::function<void(Tensor&, int64_t, int64_t)>& op) {
    Tensor full = Tensor::zeros(out_shape), blockwise = Tensor::zeros(out_shape);
    op(full, 0, N);
    for (int64_t begin = 0; begin < N; begin += kBlock) {
      Tensor out = blockwise.rows(begin, begin + kBlock);
      op(out, begin, begin + kBlock);
    }
    int64_t mismatches = 0;
    for (int64_t i = 0; i < full.numel(); ++i) mismatches += full.f32()[i] != blockwise.f32()[i];
    EXPECT_EQ(mismatches, 0) << name << ": elements differ between the OpenMP and one-thread paths";
  };
  auto non_ignored = [&](int64_t begin, int64_t end) {
    int64_t count = 0;
    for (int64_t n = begin; n < end; ++n) count += targets.i32()[n] >= 0;
    return static_cast<float>(count);
  };

  expect_same("relu_forward", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { relu_forward(out, x.rows(s, e)); });
  expect_same("relu_backward", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { relu_backward(out, dy.rows(s, e), x.rows(s, e)); });
  expect_same("gelu_forward", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { gelu_forward(out, x.rows(s, e)); });
  expect_same("gelu_backward", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { gelu_backward(out, dy.rows(s, e), x.rows(s, e)); });
  expect_same("swiglu_forward", {N, C / 2},
              [&](Tensor& out, int64_t s, int64_t e) { swiglu_forward(out, x.rows(s, e)); });
  expect_same("swiglu_backward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    swiglu_backward(out, dy_half.rows(s, e), x.rows(s, e));
  });
  expect_same("softmax_forward", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { softmax_forward(out, x.rows(s, e)); });
  expect_same("softmax_backward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    softmax_backward(out, dy.rows(s, e), probs.rows(s, e));
  });
  expect_same("rmsnorm_forward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    Tensor block_rstd = Tensor::zeros({e - s});
    rmsnorm_forward(out, block_rstd, x.rows(s, e), g, kEps);
  });
  expect_same("rmsnorm_backward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    rmsnorm_backward(&out, nullptr, dy.rows(s, e), x.rows(s, e), g, rms_rstd.rows(s, e));
  });
  expect_same("layernorm_forward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    Tensor block_mean = Tensor::zeros({e - s}), block_rstd = Tensor::zeros({e - s});
    layernorm_forward(out, block_mean, block_rstd, x.rows(s, e), g, b, kEps);
  });
  expect_same("layernorm_backward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    layernorm_backward(&out, nullptr, nullptr, dy.rows(s, e), x.rows(s, e), g, mean.rows(s, e),
                       rstd.rows(s, e));
  });
  expect_same("cross_entropy_forward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    cross_entropy_forward(out, x.rows(s, e), targets.rows(s, e));
  });
  // dloss = the number of counted rows makes the per-row scale exactly 1 both ways.
  expect_same("cross_entropy_backward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    cross_entropy_backward(out, probs.rows(s, e), targets.rows(s, e), non_ignored(s, e));
  });
  expect_same("embedding_forward", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { embedding_forward(out, ids.rows(s, e), table); });
  expect_same("gather_rows", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { gather_rows(out, table, ids.rows(s, e)); });
  expect_same("combine_forward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    combine_forward(out, table, slot.rows(s, e), weights.rows(s, e));
  });
  expect_same("combine_backward dweights", {N, 2}, [&](Tensor& out, int64_t s, int64_t e) {
    combine_backward(nullptr, &out, dy.rows(s, e), table, slot.rows(s, e), weights.rows(s, e));
  });
  expect_same("add_scaled", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { add_scaled(out, x.rows(s, e), 0.375f); });
  const uint64_t stream = stream_id(91, "parallel.jitter");
  expect_same("jitter_forward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    Tensor noise = Tensor::zeros({e - s, C});
    jitter_forward(out, noise, x.rows(s, e), 0.1f, stream, static_cast<uint64_t>(s * C));
  });
  expect_same("jitter_backward", {N, C},
              [&](Tensor& out, int64_t s, int64_t e) { jitter_backward(out, dy.rows(s, e), probs.rows(s, e)); });
  std::vector<double> counts(C);
  for (int64_t c = 0; c < C; ++c) counts[c] = static_cast<double>(c % 7);
  expect_same("load_balance_backward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    load_balance_backward(out, counts, 3.0 * N, N, 0.01, 1.0);
  });
  expect_same("z_loss_backward", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    z_loss_backward(out, x.rows(s, e), probs.rows(s, e), 0.001, N, 1.0);
  });
  // The updates modify `out` in place, starting from the same copy of x both ways.
  expect_same("adamw_update", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    std::memcpy(out.f32(), x.rows(s, e).f32(), static_cast<size_t>(out.numel()) * sizeof(float));
    Tensor m = dy.rows(s, e).clone(), v = probs.rows(s, e).clone();
    adamw_update(out, m, v, dy.rows(s, e), AdamWScalars{1e-2f, 0.9f, 0.95f, 0.1f, 0.05f, 1e-8f, 0.1f});
  });
  expect_same("sgd_update", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    std::memcpy(out.f32(), x.rows(s, e).f32(), static_cast<size_t>(out.numel()) * sizeof(float));
    Tensor buf = dy.rows(s, e).clone();
    sgd_update(out, buf, dy.rows(s, e), 1e-2f, 0.9f, 0.1f);
  });
  expect_same("scale_in_place", {N, C}, [&](Tensor& out, int64_t s, int64_t e) {
    std::memcpy(out.f32(), x.rows(s, e).f32(), static_cast<size_t>(out.numel()) * sizeof(float));
    scale_in_place(out, 0.3713);
  });

  // The loss is a parallel double reduction: compare with the blocks' losses, weighted by their counts.
  const double full_loss = cross_entropy_forward(scratch, x, targets);
  double weighted_block_losses = 0.0;
  for (int64_t s = 0; s < N; s += kBlock) {
    Tensor block_probs = Tensor::zeros({kBlock, C});
    weighted_block_losses +=
        cross_entropy_forward(block_probs, x.rows(s, s + kBlock), targets.rows(s, s + kBlock)) *
        static_cast<double>(non_ignored(s, s + kBlock));
  }
  // Both sums are in double of float32 per-row losses; the results differ only by the final
  // float32 rounding of each block's mean: ~u relative.
  EXPECT_NEAR(full_loss, weighted_block_losses / non_ignored(0, N), 4 * kUnitRoundoff * full_loss);
}

// ---------------------------------------------------------------------------------------------
// argument checks
// ---------------------------------------------------------------------------------------------

TEST(OpsArguments, LinearShapeMessageNamesOpArgumentAndShapes) {
  Tensor x = Tensor::zeros({2, 5}), w = Tensor::zeros({3, 4}), y = Tensor::zeros({2, 4});
  try {
    linear_forward(y, x, w, nullptr);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "linear_forward: w has shape (3, 4), expected (5, 4)");
  }
}

TEST(OpsArguments, WrongShapesThrowNamingTheArgument) {
  Tensor m23 = Tensor::zeros({2, 3}), m32 = Tensor::zeros({3, 2}), m22 = Tensor::zeros({2, 2});
  Tensor m24 = Tensor::zeros({2, 4}), m25 = Tensor::zeros({2, 5}), v2 = Tensor::zeros({2});
  Tensor v3 = Tensor::zeros({3});
  Tensor ids2 = Tensor::from_ints({2}, {0, 1}), slot22 = Tensor::from_ints({2, 2}, {0, 1, 1, 0});

  // linear
  EXPECT_CONTAINS(error_message([&] { linear_forward(m22, m23, m32, &v3); }), "linear_forward: b has shape (3)",
                  "expected (2)");
  EXPECT_CONTAINS(error_message([&] { linear_forward(m23, m23, m32, nullptr); }),
                  "linear_forward: y has shape (2, 3), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { linear_forward(m22, v3, m32, nullptr); }), "linear_forward: x has shape (3)",
                  "rank 2");
  EXPECT_CONTAINS(error_message([&] { linear_backward(&m23, &m23, nullptr, m22, m23, m32); }),
                  "linear_backward: dw has shape (2, 3), expected (3, 2)");
  EXPECT_CONTAINS(error_message([&] { linear_backward(&m22, nullptr, nullptr, m22, m23, m32); }),
                  "linear_backward: dx has shape (2, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { linear_backward(nullptr, nullptr, nullptr, m23, m23, m32); }),
                  "linear_backward: dy has shape (2, 3), expected (2, 2)");
  // activations
  EXPECT_CONTAINS(error_message([&] { relu_forward(m32, m23); }), "relu_forward: y has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { relu_backward(m23, m32, m23); }), "relu_backward: dy has shape (3, 2)");
  EXPECT_CONTAINS(error_message([&] { gelu_forward(m23, Tensor()); }), "gelu_forward: x", "undefined");
  EXPECT_CONTAINS(error_message([&] { gelu_backward(m32, m23, m23); }), "gelu_backward: dx has shape (3, 2)");
  EXPECT_CONTAINS(error_message([&] { swiglu_forward(m22, m25); }), "swiglu_forward: x has shape (2, 5)", "even");
  EXPECT_CONTAINS(error_message([&] { swiglu_forward(m24, m24); }),
                  "swiglu_forward: y has shape (2, 4), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { swiglu_backward(m22, m22, m24); }),
                  "swiglu_backward: dx has shape (2, 2), expected (2, 4)");
  const Tensor i23 = Tensor::from_ints({2, 3}, {0, 0, 0, 0, 0, 0});
  EXPECT_CONTAINS(error_message([&] { Tensor y = i23; relu_forward(y, m23); }),
                  "relu_forward: y has dtype int32, expected float32 or bfloat16");
  EXPECT_CONTAINS(error_message([&] { Tensor dx = i23; gelu_backward(dx, m23, m23); }),
                  "gelu_backward: dx has dtype int32, expected float32 or bfloat16");
  // sigmoid (the router's scores) writes float32 only.
  Tensor b23 = Tensor::empty({2, 3}, DType::BF16);
  EXPECT_CONTAINS(error_message([&] { sigmoid_forward(b23, m23); }),
                  "sigmoid_forward: y has dtype bfloat16, expected float32");
  // softmax
  EXPECT_CONTAINS(error_message([&] { softmax_forward(m32, m23); }), "softmax_forward: y has shape (3, 2)");
  EXPECT_CONTAINS(error_message([&] { softmax_backward(m23, m23, m32); }),
                  "softmax_backward: dy has shape (2, 3), expected (3, 2)");
  // norms
  EXPECT_CONTAINS(error_message([&] { rmsnorm_forward(m23, v2, m23, v2, kEps); }),
                  "rmsnorm_forward: g has shape (2), expected (3)");
  EXPECT_CONTAINS(error_message([&] { rmsnorm_forward(m23, v3, m23, v3, kEps); }),
                  "rmsnorm_forward: rstd has shape (3), expected (2)");
  EXPECT_CONTAINS(error_message([&] { rmsnorm_forward(m23, v2, m23, v3, -1.f); }), "rmsnorm_forward: eps = -1");
  EXPECT_CONTAINS(error_message([&] { rmsnorm_backward(&m23, &v2, m23, m23, v3, v2); }),
                  "rmsnorm_backward: dg has shape (2), expected (3)");
  Tensor no_features = Tensor::zeros({2, 0}), empty_g = Tensor::zeros({0});
  EXPECT_CONTAINS(error_message([&] { rmsnorm_forward(no_features, v2, no_features, empty_g, kEps); }),
                  "rmsnorm_forward: x has shape (2, 0)", "at least one feature");
  EXPECT_CONTAINS(error_message([&] { layernorm_forward(m23, v2, v2, m23, v3, v2, kEps); }),
                  "layernorm_forward: b has shape (2), expected (3)");
  EXPECT_CONTAINS(error_message([&] { layernorm_forward(m23, v3, v2, m23, v3, v3, kEps); }),
                  "layernorm_forward: mean has shape (3), expected (2)");
  EXPECT_CONTAINS(error_message([&] { layernorm_backward(&m23, &v3, &v2, m23, m23, v3, v2, v2); }),
                  "layernorm_backward: db has shape (2), expected (3)");
  // cross-entropy
  EXPECT_CONTAINS(error_message([&] { cross_entropy_forward(m23, m23, v2); }),
                  "cross_entropy_forward: targets has dtype float32, expected int32");
  const Tensor three_targets = Tensor::from_ints({3}, {0, 0, 0});
  EXPECT_CONTAINS(error_message([&] { cross_entropy_forward(m23, m23, three_targets); }),
                  "cross_entropy_forward: targets has shape (3), expected (2)");
  EXPECT_CONTAINS(error_message([&] { cross_entropy_backward(m32, m23, ids2, 1.f); }),
                  "cross_entropy_backward: dlogits has shape (3, 2)");
  // embedding
  EXPECT_CONTAINS(error_message([&] { embedding_forward(m22, ids2, m23); }),
                  "embedding_forward: y has shape (2, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { embedding_forward(m23, slot22, m23); }),
                  "embedding_forward: ids has shape (2, 2)", "rank 1");
  EXPECT_CONTAINS(error_message([&] { embedding_forward(m23, v2, m23); }), "embedding_forward: ids has dtype float32");
  EXPECT_CONTAINS(error_message([&] { embedding_backward(m23, m22, ids2); }),
                  "embedding_backward: dy has shape (2, 2), expected (2, 3)");
  // row movement
  EXPECT_CONTAINS(error_message([&] { gather_rows(m22, m23, ids2); }),
                  "gather_rows: y has shape (2, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { scatter_add_rows(m23, m22, ids2); }),
                  "scatter_add_rows: dy has shape (2, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { combine_forward(m23, m23, slot22, m23); }),
                  "combine_forward: weights has shape (2, 3), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { combine_forward(m22, m23, slot22, m22); }),
                  "combine_forward: y has shape (2, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { combine_backward(&m22, nullptr, m23, m23, slot22, m22); }),
                  "combine_backward: drows has shape (2, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { combine_backward(nullptr, &m23, m23, m23, slot22, m22); }),
                  "combine_backward: dweights has shape (2, 3), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { add_scaled(m23, m32, 1.f); }), "add_scaled: x has shape (3, 2), expected (2, 3)");
}

TEST(OpsArguments, RouterAndOptimizerOpsNameTheOpAndArgument) {
  Tensor m23 = Tensor::zeros({2, 3}), m32 = Tensor::zeros({3, 2}), m22 = Tensor::zeros({2, 2});
  Tensor v2 = Tensor::zeros({2}), v3 = Tensor::zeros({3}), no_experts = Tensor::zeros({2, 0});
  Tensor ids22 = Tensor::from_ints({2, 2}, {0, 1, 2, 0}), ids32 = Tensor::from_ints({3, 2}, {0, 1, 2, 0, 1, 2});
  Tensor ints2 = Tensor::from_ints({2}, {0, 1});
  const std::vector<double> counts3 = {1, 2, 1}, counts2 = {1, 1};

  // top-k: probs (2, 3), k = 2
  EXPECT_CONTAINS(error_message([&] { topk_forward(ids22, m23, m23, 2, true); }),
                  "topk_forward: weight has shape (2, 3), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { topk_forward(ids32, m22, m23, 2, true); }),
                  "topk_forward: expert has shape (3, 2), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { topk_forward(m22, m22, m23, 2, true); }),
                  "topk_forward: expert has dtype float32, expected int32");
  EXPECT_CONTAINS(error_message([&] { topk_forward(ids22, m22, m23, 2, true, &v2); }),
                  "topk_forward: selection_bias has shape (2), expected (3)");
  EXPECT_CONTAINS(error_message([&] { topk_forward(ids22, m22, m23, 4, true); }), "topk_forward: k = 4",
                  "[1, E = 3]");
  EXPECT_CONTAINS(error_message([&] { topk_backward(m32, m22, ids22, m22, m23, true); }),
                  "topk_backward: dprobs has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { topk_backward(m23, m23, ids22, m22, m23, true); }),
                  "topk_backward: dweight has shape (2, 3), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { topk_backward(m23, m22, ids32, m22, m23, true); }),
                  "topk_backward: expert has shape (3, 2), expected (2, 2)");
  const Tensor expert_past_end = Tensor::from_ints({2, 2}, {0, 1, 3, 0});
  EXPECT_CONTAINS(error_message([&] { topk_backward(m23, m22, expert_past_end, m22, m23, true); }),
                  "topk_backward: expert[1, 0] = 3", "[0, 3)");
  // group_limit: probs (2, 4)
  Tensor m24 = Tensor::zeros({2, 4});
  EXPECT_CONTAINS(error_message([&] { group_limit_forward(m24, m24, nullptr, 3, 1, 2); }),
                  "group_limit_forward: groups = 3 must divide E = 4");
  EXPECT_CONTAINS(error_message([&] { group_limit_forward(m24, m24, nullptr, 2, 3, 2); }),
                  "group_limit_forward: top_groups = 3 must be in [1, groups = 2]");
  EXPECT_CONTAINS(error_message([&] { group_limit_forward(m24, m24, nullptr, 2, 1, 3); }),
                  "group_limit_forward: terms = 3 must be 1 (max) or 2 (top-2 sum)");
  EXPECT_CONTAINS(error_message([&] { group_limit_forward(m23, m24, nullptr, 2, 1, 2); }),
                  "group_limit_forward: limited has shape (2, 3), expected (2, 4)");
  EXPECT_CONTAINS(error_message([&] { group_limit_forward(m24, m24, &v2, 2, 1, 2); }),
                  "group_limit_forward: selection_bias has shape (2), expected (4)");
  // jitter
  EXPECT_CONTAINS(error_message([&] { jitter_forward(m23, m32, m23, 0.1f, 1, 0); }),
                  "jitter_forward: noise has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { jitter_forward(m32, m23, m23, 0.1f, 1, 0); }),
                  "jitter_forward: y has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { jitter_forward(m23, m23, m23, 1.f, 1, 0); }), "jitter_forward: eps = 1",
                  "[0, 1)");
  EXPECT_CONTAINS(error_message([&] { jitter_backward(m23, m32, m23); }),
                  "jitter_backward: dy has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { jitter_backward(m32, m23, m23); }),
                  "jitter_backward: dx has shape (3, 2), expected (2, 3)");
  // auxiliary losses
  std::vector<double> prob_sum, choice_count;
  EXPECT_CONTAINS(error_message([&] { load_balance_sums(prob_sum, choice_count, m23, ids32); }),
                  "load_balance_sums: expert has shape (3, 2), expected (2, 2)");
  EXPECT_CONTAINS(error_message([&] { load_balance_sums(prob_sum, choice_count, m23, ints2); }),
                  "load_balance_sums: expert has shape (2)", "rank 2");
  EXPECT_CONTAINS(error_message([&] { load_balance_sums(prob_sum, choice_count, m23, expert_past_end); }),
                  "load_balance_sums: expert[1, 0] = 3", "[0, 3)");
  EXPECT_CONTAINS(error_message([&] { load_balance_backward(m23, counts2, 4, 2, 0.01, 1); }),
                  "load_balance_backward: choice_count has 2 entries, expected a positive multiple of E = 3");
  EXPECT_CONTAINS(error_message([&] { load_balance_backward(m23, std::vector<double>(9, 1.0), 4, 2, 0.01, 1); }),
                  "load_balance_backward: 3 groups must be >= 1 and divide the 2 rows");
  EXPECT_CONTAINS(error_message([&] { load_balance_sums(prob_sum, choice_count, m23, ids22, 3); }),
                  "load_balance_sums: 3 groups must be >= 1 and divide the 2 rows");
  EXPECT_CONTAINS(error_message([&] { topk_forward(ids22, m22, m23, 2, true, nullptr, 0.f); }),
                  "topk_forward: scale = 0 must be finite and > 0");
  EXPECT_CONTAINS(error_message([&] { topk_backward(m23, m22, ids22, m22, m23, true, -1.f); }),
                  "topk_backward: scale = -1 must be finite and > 0");
  EXPECT_CONTAINS(error_message([&] { load_balance_backward(m23, counts3, 4, 0, 0.01, 1); }),
                  "load_balance_backward: num_tokens = 0");
  EXPECT_CONTAINS(error_message([&] { z_loss_forward(no_experts, 0.01, 2); }),
                  "z_loss_forward: logits has shape (2, 0)", "at least one expert");
  EXPECT_CONTAINS(error_message([&] { z_loss_forward(v3, 0.01, 2); }), "z_loss_forward: logits has shape (3)",
                  "rank 2");
  EXPECT_CONTAINS(error_message([&] { z_loss_forward(m23, 0.01, -1); }), "z_loss_forward: mean_over = -1");
  EXPECT_CONTAINS(error_message([&] { z_loss_backward(m23, m23, m32, 0.01, 2, 1); }),
                  "z_loss_backward: probs has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { z_loss_backward(m32, m23, m23, 0.01, 2, 1); }),
                  "z_loss_backward: dlogits has shape (3, 2), expected (2, 3)");
  // index tensors
  EXPECT_CONTAINS(error_message([&] { index_ramp(ids22, 0, 1, 2); }), "index_ramp: index has shape (2, 2)",
                  "rank 1");
  EXPECT_CONTAINS(error_message([&] { index_ramp(v2, 0, 1, 2); }), "index_ramp: index has dtype float32");
  // optimizer step
  const AdamWScalars adamw{1e-3f, 0.9f, 0.95f, 0.1f, 0.05f, 1e-8f, 0.1f};
  EXPECT_CONTAINS(error_message([&] { adamw_update(m23, m32, m23, m23, adamw); }),
                  "adamw_update: m has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { adamw_update(m23, m23, m32, m23, adamw); }),
                  "adamw_update: v has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { adamw_update(m23, m23, m23, v3, adamw); }),
                  "adamw_update: g has shape (3), expected (2, 3)");
  AdamWScalars bad_beta = adamw;
  bad_beta.beta2 = 1.f;
  EXPECT_CONTAINS(error_message([&] { adamw_update(m23, m23, m23, m23, bad_beta); }), "adamw_update: beta2 = 1",
                  "[0, 1)");
  AdamWScalars bad_correction = adamw;
  bad_correction.bias_correction1 = 0.f;
  EXPECT_CONTAINS(error_message([&] { adamw_update(m23, m23, m23, m23, bad_correction); }),
                  "adamw_update: bias_correction1 = 0");
  EXPECT_CONTAINS(error_message([&] { sgd_update(m23, m32, m23, 1e-3f, 0.9f, 0.f); }),
                  "sgd_update: buf has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { sgd_update(m23, m23, m22, 1e-3f, 0.9f, 0.f); }),
                  "sgd_update: g has shape (2, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { sgd_update(m23, m23, m23, 1e-3f, 1.5f, 0.f); }), "sgd_update: momentum = 1.5");
  // Any shape is accepted by these two: the dtype and the factor are what can be wrong.
  EXPECT_CONTAINS(error_message([&] { sum_of_squares(ints2); }), "sum_of_squares: x has dtype int32, expected float32");
  EXPECT_CONTAINS(error_message([&] { sum_of_squares(Tensor()); }), "sum_of_squares: x", "undefined");
  EXPECT_CONTAINS(error_message([&] { scale_in_place(ints2, 0.5); }), "scale_in_place: x has dtype int32");
  EXPECT_CONTAINS(error_message([&] { scale_in_place(m23, std::numeric_limits<double>::infinity()); }),
                  "scale_in_place: factor = inf must be finite");
}

TEST(OpsArguments, OutOfRangeIndicesThrowNamingThePosition) {
  Tensor table = Tensor::zeros({4, 3}), y = Tensor::zeros({3, 3});
  try {
    embedding_forward(y, Tensor::from_ints({3}, {0, 5, 1}), table);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "embedding_forward: ids[1] = 5 is out of range, expected [0, 4)");
  }
  const Tensor negative_id = Tensor::from_ints({3}, {0, 1, -1});
  const Tensor id_past_end = Tensor::from_ints({3}, {4, 0, 0});
  EXPECT_CONTAINS(error_message([&] { embedding_forward(y, negative_id, table); }), "embedding_forward: ids[2] = -1",
                  "[0, 4)");
  EXPECT_CONTAINS(error_message([&] { embedding_backward(table, y, id_past_end); }), "embedding_backward: ids[0] = 4",
                  "[0, 4)");

  Tensor logits = Tensor::zeros({3, 5}), probs = Tensor::zeros({3, 5});
  const Tensor target_past_end = Tensor::from_ints({3}, {0, -1, 7});
  const Tensor target_below_ignore = Tensor::from_ints({3}, {-2, 0, 0});
  const Tensor target_equal_to_classes = Tensor::from_ints({3}, {0, 5, 0});
  EXPECT_CONTAINS(error_message([&] { cross_entropy_forward(probs, logits, target_past_end); }),
                  "cross_entropy_forward: targets[2] = 7", "[-1, 5)", "ignored");
  EXPECT_CONTAINS(error_message([&] { cross_entropy_forward(probs, logits, target_below_ignore); }),
                  "cross_entropy_forward: targets[0] = -2");
  EXPECT_CONTAINS(error_message([&] { cross_entropy_backward(probs, probs, target_equal_to_classes, 1.f); }),
                  "cross_entropy_backward: targets[1] = 5", "[-1, 5)");

  Tensor x = Tensor::zeros({4, 2}), gathered = Tensor::zeros({2, 2});
  const Tensor index_past_end = Tensor::from_ints({2}, {3, 4});
  const Tensor negative_index = Tensor::from_ints({2}, {-1, 0});
  EXPECT_CONTAINS(error_message([&] { gather_rows(gathered, x, index_past_end); }), "gather_rows: index[1] = 4",
                  "[0, 4)");
  EXPECT_CONTAINS(error_message([&] { scatter_add_rows(x, gathered, negative_index); }),
                  "scatter_add_rows: index[0] = -1", "[0, 4)");

  Tensor rows = Tensor::zeros({4, 2}), combined = Tensor::zeros({2, 2}), weights = Tensor::zeros({2, 2});
  const Tensor bad_slot = Tensor::from_ints({2, 2}, {0, -1, 9, 1});
  EXPECT_CONTAINS(error_message([&] { combine_forward(combined, rows, bad_slot, weights); }),
                  "combine_forward: slot[1, 0] = 9", "[-1, 4)");
  EXPECT_CONTAINS(error_message([&] { combine_backward(&rows, nullptr, combined, rows, bad_slot, weights); }),
                  "combine_backward: slot[1, 0] = 9", "[-1, 4)");
}

TEST(OpsArguments, Bf16DtypeCombinationsThrowNamingTheArgument) {
  const Tensor x16 = Tensor::zeros({2, 3}, DType::BF16), w16 = Tensor::zeros({3, 2}, DType::BF16);
  const Tensor x32 = Tensor::zeros({2, 3}), w32 = Tensor::zeros({3, 2}), wt16 = Tensor::zeros({2, 3}, DType::BF16);
  const Tensor xi = Tensor::from_ints({2, 3}, {0, 1, 2, 3, 4, 5});
  Tensor y = Tensor::zeros({2, 2}), y16 = Tensor::zeros({2, 2}, DType::BF16), dy32 = Tensor::zeros({2, 2});
  Tensor dx16 = Tensor::zeros({2, 3}, DType::BF16), dw16 = Tensor::zeros({2, 3}, DType::BF16);
  const char* mixed = "; x, w and dy must all be float32 or all bfloat16";
  EXPECT_CONTAINS(error_message([&] { linear_forward(y, x16, w32, nullptr); }),
                  "linear_forward: w has dtype float32 but x has bfloat16", mixed);
  EXPECT_CONTAINS(error_message([&] { linear_forward(y, x32, w16, nullptr); }),
                  "linear_forward: w has dtype bfloat16 but x has float32", mixed);
  EXPECT_CONTAINS(error_message([&] { linear_forward(y, xi, w32, nullptr); }),
                  "linear_forward: x has dtype int32, expected float32 or bfloat16");
  EXPECT_CONTAINS(error_message([&] { linear_forward(y16, x16, w16, nullptr); }),
                  "linear_forward: y has dtype bfloat16, expected float32");
  EXPECT_CONTAINS(error_message([&] { linear_backward(nullptr, nullptr, nullptr, dy32, x16, w16); }),
                  "linear_backward: dy has dtype float32 but x has bfloat16", mixed);
  EXPECT_CONTAINS(error_message([&] { linear_backward(&dx16, nullptr, nullptr, y16, x16, w16); }),
                  "linear_backward: dx has dtype bfloat16, expected float32");
  EXPECT_CONTAINS(error_message([&] { linear_transposed_forward(y, x16, x32); }),
                  "linear_transposed_forward: w has dtype float32 but x has bfloat16", mixed);
  EXPECT_CONTAINS(error_message([&] { linear_transposed_backward(nullptr, &dw16, y16, x16, wt16); }),
                  "linear_transposed_backward: dw has dtype bfloat16, expected float32");
  // convert
  Tensor y23 = Tensor::zeros({2, 3}), y32_16 = Tensor::zeros({3, 2}, DType::BF16);
  EXPECT_CONTAINS(error_message([&] { convert(y23, x32); }),
                  "convert: x is float32 and y is float32; expected float32 to bfloat16 or bfloat16 to float32");
  EXPECT_CONTAINS(error_message([&] { convert(y23, xi); }), "convert: x is int32 and y is float32");
  EXPECT_CONTAINS(error_message([&] { convert(y32_16, x32); }), "convert: y has shape (3, 2), expected (2, 3)");
  EXPECT_CONTAINS(error_message([&] { convert(y23, Tensor()); }), "convert: x", "undefined");
}

// ---------------------------------------------------------------------------------------------
// CUDA in a build without it
// ---------------------------------------------------------------------------------------------
#if !MOE_HAVE_CUDA  // with CUDA, tests/test_backend_ops.cpp runs every op on the device

TEST(NoCuda, AllocationOnCudaThrows) {
  EXPECT_THROW(Tensor::zeros({2, 3}, DType::F32, Device::CUDA), InvalidArgument);
}

// Device tensors cannot be made here, so call the cuda:: backend directly (it ignores its arguments).
TEST(NoCuda, EveryCudaBackendOpThrowsNamingTheOp) {
  Tensor t = Tensor::zeros({1, 2});
  std::vector<double> sums;
  struct Stub {
    const char* op;
    std::function<void()> call;
  };
  const std::vector<Stub> stubs = {
      {"convert", [&] { cuda::convert(t, t); }},
      {"linear_forward", [&] { cuda::linear_forward(t, t, t, nullptr); }},
      {"linear_backward", [&] { cuda::linear_backward(nullptr, nullptr, nullptr, t, t, t); }},
      {"grouped_linear_forward", [&] { cuda::grouped_linear_forward(t, t, {0, 1}, t); }},
      {"grouped_linear_backward", [&] { cuda::grouped_linear_backward(nullptr, nullptr, t, t, {0, 1}, t); }},
      {"relu_forward", [&] { cuda::relu_forward(t, t); }},
      {"relu_backward", [&] { cuda::relu_backward(t, t, t); }},
      {"gelu_forward", [&] { cuda::gelu_forward(t, t); }},
      {"gelu_backward", [&] { cuda::gelu_backward(t, t, t); }},
      {"swiglu_forward", [&] { cuda::swiglu_forward(t, t); }},
      {"swiglu_backward", [&] { cuda::swiglu_backward(t, t, t); }},
      {"sigmoid_forward", [&] { cuda::sigmoid_forward(t, t); }},
      {"sigmoid_backward", [&] { cuda::sigmoid_backward(t, t, t); }},
      {"softmax_forward", [&] { cuda::softmax_forward(t, t); }},
      {"softmax_backward", [&] { cuda::softmax_backward(t, t, t); }},
      {"normalize_rows_forward", [&] { cuda::normalize_rows_forward(t, t); }},
      {"normalize_rows_backward", [&] { cuda::normalize_rows_backward(t, t, t); }},
      {"rmsnorm_forward", [&] { cuda::rmsnorm_forward(t, t, t, t, kEps); }},
      {"rmsnorm_backward", [&] { cuda::rmsnorm_backward(nullptr, nullptr, t, t, t, t); }},
      {"layernorm_forward", [&] { cuda::layernorm_forward(t, t, t, t, t, t, kEps); }},
      {"layernorm_backward", [&] { cuda::layernorm_backward(nullptr, nullptr, nullptr, t, t, t, t, t); }},
      {"cross_entropy_forward", [&] { cuda::cross_entropy_forward(t, t, t); }},
      {"cross_entropy_backward", [&] { cuda::cross_entropy_backward(t, t, t, 1.f); }},
      {"embedding_forward", [&] { cuda::embedding_forward(t, t, t); }},
      {"embedding_backward", [&] { cuda::embedding_backward(t, t, t); }},
      {"gather_rows", [&] { cuda::gather_rows(t, t, t); }},
      {"scatter_add_rows", [&] { cuda::scatter_add_rows(t, t, t); }},
      {"combine_forward", [&] { cuda::combine_forward(t, t, t, t); }},
      {"combine_backward", [&] { cuda::combine_backward(nullptr, nullptr, t, t, t, t); }},
      {"add_scaled", [&] { cuda::add_scaled(t, t, 1.f); }},
      {"allocate_bytes", [&] { cuda::allocate_bytes(8); }},
      {"copy_bytes", [&] { cuda::copy_bytes(t.data(), t.data(), 8); }},
      {"zero_bytes", [&] { cuda::zero_bytes(t.data(), 8); }},
      {"fill_f32", [&] { cuda::fill_f32(t.f32(), 2, 1.f); }},
      {"copy_to_host", [&] { cuda::copy_to_host(t.data(), t.data(), 8); }},
      {"copy_from_host", [&] { cuda::copy_from_host(t.data(), t.data(), 8); }},
      {"topk_forward", [&] { cuda::topk_forward(t, t, t, 1, true, nullptr, 1.f); }},
      {"topk_backward", [&] { cuda::topk_backward(t, t, t, t, t, true, 1.f); }},
      {"group_limit_forward", [&] { cuda::group_limit_forward(t, t, nullptr, 1, 1, 1); }},
      {"jitter_forward", [&] { cuda::jitter_forward(t, t, t, 0.1f, 1, 0); }},
      {"jitter_backward", [&] { cuda::jitter_backward(t, t, t); }},
      {"load_balance_sums", [&] { cuda::load_balance_sums(sums, sums, t, t, 1); }},
      {"load_balance_backward", [&] { cuda::load_balance_backward(t, sums, 1.0, 1.0, 1.0, 1.0); }},
      {"z_loss_forward", [&] { cuda::z_loss_forward(t, 1.0, 1.0); }},
      {"z_loss_backward", [&] { cuda::z_loss_backward(t, t, t, 1.0, 1.0, 1.0); }},
      {"index_ramp", [&] { cuda::index_ramp(t, 0, 1, 1); }},
      {"adamw_update", [&] { cuda::adamw_update(t, t, t, t, AdamWScalars{1, 0, 0, 1, 1, 1, 0}); }},
      {"sgd_update", [&] { cuda::sgd_update(t, t, t, 1.f, 0.f, 0.f); }},
      {"sum_of_squares", [&] { cuda::sum_of_squares(t); }},
      {"scale_in_place", [&] { cuda::scale_in_place(t, 1.0); }},
      {"selection_bias_update", [&] { cuda::selection_bias_update(t, {1, 2}, 0.1); }},
      {"first_nonfinite", [&] { cuda::first_nonfinite(t); }},
      {"rotary_forward", [&] { cuda::rotary_forward(t, t, 1, 1, 1.f, nullptr, 0); }},
      {"cached_attention_forward", [&] { cuda::cached_attention_forward(t, t, t, t, 1, 0); }},
      {"rotary_backward", [&] { cuda::rotary_backward(t, t, 1, 1, 1.f, nullptr); }},
      {"causal_attention_forward", [&] { cuda::causal_attention_forward(t, t, t, t, t, 1, 1, nullptr); }},
      {"causal_attention_backward",
       [&] { cuda::causal_attention_backward(nullptr, nullptr, nullptr, t, t, t, t, t, t, 1, 1, nullptr); }},
      {"linear_transposed_forward", [&] { cuda::linear_transposed_forward(t, t, t); }},
      {"linear_transposed_backward", [&] { cuda::linear_transposed_backward(nullptr, nullptr, t, t, t); }},
  };
  for (const Stub& stub : stubs)
    EXPECT_CONTAINS(error_message(stub.call), std::string(stub.op) + " has no CUDA implementation in this build");
}
#endif  // !MOE_HAVE_CUDA

}  // namespace
}  // namespace moe
