// Every op on every device of the build against the CPU (after ggml's test-backend-ops): the same
// inputs run on the CPU and, moved with Tensor::to, on the device under test, and the outputs are
// compared. A device this build or machine lacks is skipped with one line saying so. On the CPU the
// test checks the plumbing (moves, dispatch, outputs coming back intact), not the math, which
// tests/test_ops.cpp checks against references; on a GPU it is the CUDA backend's test.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/optim_ops.h"
#include "core/tensor.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using namespace test;  // NOLINT(google-build-using-namespace): the shared test helpers

// One op: makes its CPU inputs (deterministic), runs the op on `device` with the inputs moved there,
// and returns its outputs back on the CPU.
struct OpCase {
  std::string name;
  std::function<std::vector<Tensor>(Device)> run;
};

Tensor on(Device d, const Tensor& t) { return t.to(d); }
Tensor zeros_on(Device d, const Shape& s) { return Tensor::zeros(s, DType::F32, d); }
std::vector<Tensor> to_host(std::vector<Tensor> outs) {
  for (Tensor& t : outs) t = t.to(Device::CPU);
  return outs;
}

std::vector<OpCase> op_cases() {
  const Tensor x = normal_tensor({6, 8}, 1.f, 1, "x"), w = normal_tensor({8, 5}, 0.5f, 2, "w");
  const Tensor b = normal_tensor({5}, 0.5f, 3, "b"), dy5 = normal_tensor({6, 5}, 1.f, 4, "dy5");
  const Tensor dy8 = normal_tensor({6, 8}, 1.f, 5, "dy8"), g = normal_tensor({8}, 1.f, 6, "g");
  const Tensor dy4 = normal_tensor({6, 4}, 1.f, 7, "dy4");
  const Tensor targets = Tensor::from_ints({6}, {0, 3, 7, -1, 2, 7});
  const Tensor index = Tensor::from_ints({4}, {5, 0, 0, 3});
  const Tensor slot = Tensor::from_ints({3, 2}, {0, 2, 1, -1, 3, 4});
  const Tensor cw = normal_tensor({3, 2}, 1.f, 8, "cw"), rows = normal_tensor({5, 8}, 1.f, 9, "rows");
  const Tensor dy3 = normal_tensor({3, 8}, 1.f, 10, "dy3");
  return {
      {"linear", [=](Device d) {
         Tensor y = zeros_on(d, {6, 5}), dx = zeros_on(d, {6, 8}), dw = zeros_on(d, {8, 5}), db = zeros_on(d, {5});
         Tensor xd = on(d, x), wd = on(d, w), bd = on(d, b);
         linear_forward(y, xd, wd, &bd);
         linear_backward(&dx, &dw, &db, on(d, dy5), xd, wd);
         return to_host({y, dx, dw, db});
       }},
      {"gelu", [=](Device d) {
         Tensor y = zeros_on(d, {6, 8}), dx = zeros_on(d, {6, 8});
         gelu_forward(y, on(d, x));
         gelu_backward(dx, on(d, dy8), on(d, x));
         return to_host({y, dx});
       }},
      {"swiglu", [=](Device d) {
         Tensor y = zeros_on(d, {6, 4}), dx = zeros_on(d, {6, 8});
         swiglu_forward(y, on(d, x));
         swiglu_backward(dx, on(d, dy4), on(d, x));
         return to_host({y, dx});
       }},
      {"softmax", [=](Device d) {
         Tensor y = zeros_on(d, {6, 8}), dx = zeros_on(d, {6, 8});
         softmax_forward(y, on(d, x));
         softmax_backward(dx, on(d, dy8), y);
         return to_host({y, dx});
       }},
      {"rmsnorm", [=](Device d) {
         Tensor y = zeros_on(d, {6, 8}), rstd = zeros_on(d, {6}), dx = zeros_on(d, {6, 8}), dg = zeros_on(d, {8});
         rmsnorm_forward(y, rstd, on(d, x), on(d, g), 1e-5f);
         rmsnorm_backward(&dx, &dg, on(d, dy8), on(d, x), on(d, g), rstd);
         return to_host({y, rstd, dx, dg});
       }},
      {"cross_entropy", [=](Device d) {
         Tensor probs = zeros_on(d, {6, 8}), dl = zeros_on(d, {6, 8});
         const float loss = cross_entropy_forward(probs, on(d, x), on(d, targets));
         cross_entropy_backward(dl, probs, on(d, targets), 1.f);
         return to_host({probs, dl, Tensor::from({1}, {loss})});
       }},
      {"gather_scatter_rows", [=](Device d) {
         Tensor y = zeros_on(d, {4, 8}), dx = zeros_on(d, {6, 8});
         gather_rows(y, on(d, x), on(d, index));
         scatter_add_rows(dx, y, on(d, index));
         return to_host({y, dx});
       }},
      {"combine", [=](Device d) {
         Tensor y = zeros_on(d, {3, 8}), drows = zeros_on(d, {5, 8}), dweights = zeros_on(d, {3, 2});
         combine_forward(y, on(d, rows), on(d, slot), on(d, cw));
         combine_backward(&drows, &dweights, on(d, dy3), on(d, rows), on(d, slot), on(d, cw));
         return to_host({y, drows, dweights});
       }},
      {"adamw_update", [=](Device d) {
         // A copy: on the CPU, to() shares storage, and the update must not reach the shared input.
         Tensor wd = on(d, w).clone(), m = zeros_on(d, {8, 5}), v = zeros_on(d, {8, 5});
         adamw_update(wd, m, v, on(d, w), AdamWScalars{1e-2f, 0.9f, 0.95f, 0.1f, 0.05f, 1e-8f, 0.1f});
         return to_host({wd, m, v});
       }},
      {"scale_in_place", [=](Device d) {
         Tensor wd = on(d, w).clone();
         scale_in_place(wd, 0.125);
         return to_host({wd});
       }},
      {"selection_bias_update", [=](Device d) {
         // Loads below, above and at the mean (6): each direction of the step, and no step.
         Tensor bias = on(d, b).clone();
         selection_bias_update(bias, {2, 9, 6, 10, 3}, 0.25);
         return to_host({bias});
       }},
      {"first_nonfinite", [=](Device d) {
         Tensor bad = x.clone();
         bad.f32()[13] = std::numeric_limits<float>::infinity();
         bad.f32()[29] = std::nanf("");
         return to_host({Tensor::from({2}, {float(first_nonfinite(on(d, bad))), float(first_nonfinite(on(d, x)))})});
       }},
  };
}

class BackendOps : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override {
    if (GetParam() == Device::CUDA && !device_available(Device::CUDA)) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(BackendOps, EveryOpMatchesTheCpu) {
  const Device device = GetParam();
  // The CPU against itself must agree bit for bit; another device computes in another order (fused
  // multiply-adds, other reduction trees): float32 rounding of sums of at most 8 terms of size ~1.
  const double tolerance = device == Device::CPU ? 0.0 : 1e-5;
  for (const OpCase& c : op_cases()) {
    const std::vector<Tensor> want = c.run(Device::CPU), got = c.run(device);
    ASSERT_EQ(want.size(), got.size()) << c.name;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i].device(), Device::CPU) << c.name << " output " << i;
      ASSERT_EQ(got[i].shape(), want[i].shape()) << c.name << " output " << i;
      EXPECT_GT(max_abs(want[i]), 0.0) << c.name << " output " << i << " is all zeros: the comparison proves nothing";
      double worst = 0;
      for (int64_t e = 0; e < want[i].numel(); ++e)
        worst = std::max(worst, std::fabs(double(got[i].f32()[e]) - want[i].f32()[e]) /
                                    std::max(1.0, std::fabs(double(want[i].f32()[e]))));
      EXPECT_LE(worst, tolerance) << c.name << " output " << i << " on " << to_string(device);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, BackendOps, ::testing::Values(Device::CPU, Device::CUDA),
                         [](const ::testing::TestParamInfo<Device>& param) {
                           return std::string(to_string(param.param));
                         });

TEST(BackendOps, OnlyTheCpuIsAvailableInABuildWithoutCuda) {
  EXPECT_TRUE(device_available(Device::CPU));
  EXPECT_FALSE(device_available(Device::CUDA));
}

}  // namespace
}  // namespace moe
