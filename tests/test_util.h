// Helpers shared by the unit and MPI tests: the message of an expected exception and substring checks
// on messages, the finite-difference gradient checker, deterministic tensors, temporary directories, and
// small model configs.
#pragma once

#include <cxxabi.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/model/transformer.h"
#include "core/random.h"
#include "core/tensor.h"

namespace moe::test {

// ---------------------------------------------------------------------------------------------
// Error messages
// ---------------------------------------------------------------------------------------------

// The readable name of type T ("moe::InvalidArgument"), for failure messages.
template <typename T>
std::string readable_type_name() {
  int status = 0;
  const std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(typeid(T).name(), nullptr, nullptr, &status),
                                                    std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(typeid(T).name());
}

// Runs f() and returns the what() of the exception of type E it throws. When f() returns normally,
// adds a non-fatal failure ("expected E, nothing was thrown") and returns "", so that substring
// checks on the result fail as well. An exception of another type propagates: GoogleTest reports it
// as a failure of the test.
template <typename E = InvalidArgument, typename F>
std::string error_message(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected " << readable_type_name<E>() << ", nothing was thrown";
  return "";
}

// Success when `text` contains every one of `parts` (at least one must be given); the failure names
// each missing part and quotes the text. Adds no failure itself: use it in EXPECT_TRUE, or through
// EXPECT_CONTAINS below.
inline ::testing::AssertionResult contains_all(const std::string& text, const std::vector<std::string>& parts) {
  if (parts.empty()) return ::testing::AssertionFailure() << "no parts to look for: the check cannot fail";
  std::vector<std::string> missing;
  for (const std::string& part : parts)
    if (text.find(part) == std::string::npos) missing.push_back(part);
  if (missing.empty()) return ::testing::AssertionSuccess();
  ::testing::AssertionResult failure = ::testing::AssertionFailure();
  for (const std::string& part : missing) failure << "'" << part << "' ";
  return failure << "not in: \"" << text << "\"";
}

// EXPECT_CONTAINS(text, part...): a non-fatal failure at the caller's line unless `text` (a
// std::string or const char*) contains every `part`. Typical use:
//   EXPECT_CONTAINS(error_message([&] { f(bad); }), "bad = 3", "accepted: >= 0");
#define EXPECT_CONTAINS(text, ...) EXPECT_TRUE(::moe::test::contains_all((text), {__VA_ARGS__}))

// ---------------------------------------------------------------------------------------------
// Finite-difference gradient checks
// ---------------------------------------------------------------------------------------------
//
// The analytic gradient of a scalar loss L with respect to a float32 tensor x is compared, element
// by element, with the central difference
//   fd_i = (L(x_i + h) - L(x_i - h)) / ((x_i + h) - (x_i - h)),
// where x_i + h and x_i - h are rounded to float32 (x's type) before L is evaluated, and the divisor
// is the step actually taken after that rounding, not 2h. L comes back as a double: callers run
// their forwards in float32 and sum the outputs into L in double, so that summing adds no error of
// its own and what limits fd_i is the float32 rounding of the forward (noise ~ eps_L / h) plus the
// truncation error of the central difference (h^2 |f'''| / 6). A smaller h shrinks the second and
// grows the first; each caller chooses h and the tolerance next to its constants, with the reason.
// Element i passes when |analytic_i - fd_i| <= atol + rtol |fd_i| (a NaN on either side fails).
//
// Losses that are only piecewise smooth (routing choices, ReLU kinks) return an FdPoint with a
// signature of what selects the piece; an element whose +h or -h evaluation has a signature other
// than the unperturbed one is skipped (and counted), not compared.

// Step and tolerance of one check.
struct FdTolerance {
  float step;   // h, added to and subtracted from one float32 element at a time
  double atol;  // element i passes when |analytic_i - fd_i| <= atol + rtol * |fd_i|
  double rtol;
};

// One evaluation of the loss, and what makes it piecewise (empty for a smooth loss).
struct FdPoint {
  double loss = 0.0;
  std::vector<int32_t> signature;
};

// What one or more checks found.
struct FdTally {
  int64_t checked = 0;        // elements compared
  int64_t skipped = 0;        // elements whose +h or -h evaluation changed the signature
  int64_t failed = 0;         // compared elements outside the tolerance (or NaN)
  double worst = 0.0;         // largest |analytic - fd| / allowed error (+inf for a NaN)
  double max_abs_fd = 0.0;    // largest |fd|: ~0 means L does not depend on x, and the check proves nothing
  std::string worst_element;  // "name[i]: analytic a, finite difference f" for the worst element

  FdTally& operator+=(const FdTally& other) {
    checked += other.checked;
    skipped += other.skipped;
    failed += other.failed;
    max_abs_fd = std::max(max_abs_fd, other.max_abs_fd);
    if (!other.worst_element.empty() && (worst_element.empty() || other.worst > worst))
      worst_element = other.worst_element;
    worst = std::max(worst, other.worst);
    return *this;
  }

  // One line: the counts, the worst ratio and max |fd|, and the worst element.
  std::string summary() const {
    std::ostringstream os;
    os << "checked " << checked << " skipped " << skipped << " failed " << failed << " worst err/tol " << worst
       << " max|fd| " << max_abs_fd;
    if (!worst_element.empty()) os << "; worst " << worst_element;
    return os.str();
  }
};

// Indices 0 .. t.numel() - 1.
inline std::vector<int64_t> all_elements(const Tensor& t) {
  std::vector<int64_t> e(static_cast<size_t>(t.numel()));
  std::iota(e.begin(), e.end(), int64_t{0});
  return e;
}

// The evaluations at x_i + h and x_i - h, and the step actually taken between them.
struct FdEvaluations {
  FdPoint plus, minus;
  double taken;  // (x_i + h) - (x_i - h) after both were rounded to float32
};

// Sets element i of `param` to x_i + h, then x_i - h, calling eval() at each (eval must run the
// forward on param's current contents), and restores x_i exactly.
inline FdEvaluations evaluate_around(Tensor& param, int64_t i, float step, const std::function<FdPoint()>& eval) {
  float* p = param.f32();
  const float v = p[i];
  const float v_plus = v + step;
  const float v_minus = v - step;
  FdEvaluations e;
  p[i] = v_plus;
  e.plus = eval();
  p[i] = v_minus;
  e.minus = eval();
  p[i] = v;
  e.taken = static_cast<double>(v_plus) - v_minus;
  return e;
}

// The central difference of loss() with respect to element i of `param` (see above); param is
// restored afterwards.
inline double central_difference(Tensor& param, int64_t i, float step, const std::function<double()>& loss) {
  const FdEvaluations e = evaluate_around(param, i, step, [&] { return FdPoint{loss(), {}}; });
  return (e.plus.loss - e.minus.loss) / e.taken;
}

// Compares analytic[i] with the central difference of eval() for each i in `elements` (all when
// empty), perturbing `param` in place and restoring it (two evaluations of the loss per element).
// `base` is eval() at the unperturbed param: an element is compared only when both its evaluations
// keep base's signature. Adds no test failure (but for a shape mismatch), so that a test can also
// show a wrong gradient being caught; `name` labels the worst element.
inline FdTally check_gradient(const std::string& name, Tensor& param, const Tensor& analytic,
                              const std::function<FdPoint()>& eval, const FdPoint& base, const FdTolerance& tol,
                              const std::vector<int64_t>& elements = {}) {
  FdTally tally;
  if (param.shape() != analytic.shape()) {
    ADD_FAILURE() << name << ": parameter shape " << to_string(param.shape()) << " but gradient shape "
                  << to_string(analytic.shape());
    tally.failed = 1;
    tally.worst = std::numeric_limits<double>::infinity();
    return tally;
  }
  for (int64_t i : elements.empty() ? all_elements(param) : elements) {
    const FdEvaluations e = evaluate_around(param, i, tol.step, eval);
    if (e.plus.signature != base.signature || e.minus.signature != base.signature) {
      ++tally.skipped;
      continue;
    }
    ++tally.checked;
    const double fd = (e.plus.loss - e.minus.loss) / e.taken;
    const double a = analytic.f32()[i];
    const double error = std::fabs(a - fd);
    const double allowed = tol.atol + tol.rtol * std::fabs(fd);
    const bool pass = error <= allowed;  // false for NaN
    tally.failed += !pass;
    tally.max_abs_fd = std::max(tally.max_abs_fd, std::fabs(fd));
    const double ratio = std::isnan(error) ? std::numeric_limits<double>::infinity() : error / allowed;
    if (tally.worst_element.empty() || ratio > tally.worst) {
      tally.worst = std::max(tally.worst, ratio);
      std::ostringstream os;
      os << name << "[" << i << "]: analytic " << a << ", finite difference " << fd;
      tally.worst_element = os.str();
    }
  }
  return tally;
}

// check_gradient for a smooth loss (no signature).
inline FdTally check_gradient(const std::string& name, Tensor& param, const Tensor& analytic,
                              const std::function<double()>& loss, const FdTolerance& tol,
                              const std::vector<int64_t>& elements = {}) {
  return check_gradient(
      name, param, analytic, [&] { return FdPoint{loss(), {}}; }, FdPoint{}, tol, elements);
}

// Success when no compared element of the tally failed; the failure gives the tally's summary.
inline ::testing::AssertionResult gradient_matches(const FdTally& tally) {
  if (tally.failed == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << tally.failed << " element(s) outside the tolerance: " << tally.summary();
}

// Prints "  name  summary" when MOE_TEST_VERBOSE is set or the test has failed.
inline void print_tally_if_verbose(const std::string& name, const FdTally& tally) {
  if (::testing::Test::HasFailure() || std::getenv("MOE_TEST_VERBOSE"))
    std::printf("  %-28s %s\n", name.c_str(), tally.summary().c_str());
}

// check_gradient of a piecewise loss, expecting every compared element within the tolerance. Returns
// the tally: the caller checks how many elements were skipped and that max_abs_fd is not ~0.
inline FdTally expect_piecewise_gradient(const std::string& name, Tensor& param, const Tensor& analytic,
                                         const std::function<FdPoint()>& eval, const FdPoint& base,
                                         const FdTolerance& tol, const std::vector<int64_t>& elements = {}) {
  const FdTally tally = check_gradient(name, param, analytic, eval, base, tol, elements);
  EXPECT_TRUE(gradient_matches(tally)) << name;
  print_tally_if_verbose(name, tally);
  return tally;
}

// check_gradient of a smooth loss, expecting every element within the tolerance and the largest |fd|
// above `vacuous_below` (else the loss barely depends on param and the check proves nothing).
inline void expect_gradient(const std::string& name, Tensor& param, const Tensor& analytic,
                            const std::function<double()>& loss, const FdTolerance& tol, double vacuous_below,
                            const std::vector<int64_t>& elements = {}) {
  const FdTally tally = check_gradient(name, param, analytic, loss, tol, elements);
  EXPECT_TRUE(gradient_matches(tally)) << name;
  EXPECT_GT(tally.max_abs_fd, vacuous_below) << name << ": the loss barely depends on it; the check is vacuous";
  print_tally_if_verbose(name, tally);
}

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

// A float32 tensor of N(0, std^2) values from the random stream stream_id(seed, name): the same
// values for the same seed, name and shape, on every run and rank.
inline Tensor normal_tensor(const Shape& shape, float std, uint64_t seed, std::string_view name) {
  Tensor t = Tensor::empty(shape);
  fill_normal(t, std, stream_id(seed, name));
  return t;
}

// Document positions (core/ops.h) of B sequences of S tokens, (B*S) int32: sequence b packs documents
// of 37 + 13 b, 5, 90, 1, 64 and 140 tokens in turn, the last cut off by the sequence's end. So a
// document inside a 64-row query block, one across blocks, a one-token one, and (S >= 300) a query
// block whose documents all start after the first 128-key block.
inline Tensor test_document_positions(int64_t B, int64_t S) {
  Tensor t = Tensor::empty({B * S}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t lengths[] = {37 + 13 * b, 5, 90, 1, 64, 140};
    int64_t doc = 0, start = 0;
    for (int64_t s = 0; s < S; ++s) {
      if (s - start == lengths[doc % 6]) {
        start = s;
        ++doc;
      }
      t.i32()[b * S + s] = static_cast<int32_t>(s - start);
    }
  }
  return t;
}

// sum_i y_i r_i, summed in double: the scalar loss L = sum(y * r) whose gradient with respect to y is r.
inline double weighted_sum(const Tensor& y, const Tensor& r) {
  double sum = 0.0;
  for (int64_t i = 0; i < y.numel(); ++i) sum += static_cast<double>(y.f32()[i]) * r.f32()[i];
  return sum;
}

// max_i |t_i| of a float32 tensor (0 for an empty one).
inline double max_abs(const Tensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(static_cast<double>(t.f32()[i])));
  return m;
}

// The elements of an int32 / float32 tensor as a vector, for EXPECT_EQ against a literal.
// ||a - b|| / ||b|| over all elements of two float32 host tensors, in double.
inline double relative_rms_error(const Tensor& a, const Tensor& b) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    diff += std::pow(static_cast<double>(a.f32()[i]) - b.f32()[i], 2);
    norm += std::pow(static_cast<double>(b.f32()[i]), 2);
  }
  return std::sqrt(diff / norm);
}
inline std::vector<int32_t> ints_of(const Tensor& t) { return std::vector<int32_t>(t.i32(), t.i32() + t.numel()); }
inline std::vector<float> floats_of(const Tensor& t) { return std::vector<float>(t.f32(), t.f32() + t.numel()); }

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

// A fresh directory under the system's temporary directory (mkdtemp, so unique across processes),
// removed with everything in it on destruction. Throws std::runtime_error when it cannot be made.
// Not copyable; not shared between ranks (each rank that makes one gets its own).
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "moe_test") {
    std::string pattern = (std::filesystem::temp_directory_path() / (std::string(prefix) + "_XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("TempDir: cannot create " + pattern);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The directory.
  const std::string& path() const { return path_; }
  // path()/name; nothing is created.
  std::string file(std::string_view name) const { return (std::filesystem::path(path_) / name).string(); }
  // Writes `text` to path()/name (replacing any file there) and returns that path.
  std::string write(std::string_view name, std::string_view text) const {
    const std::string p = file(name);
    std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
    return p;
  }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// Small model configs
// ---------------------------------------------------------------------------------------------

// An MoE layer's config with these sizes and activation, every other setting at its default. d_model
// 0 is for a transformer's `moe` section, whose d_model the model fills in.
inline MoEConfig moe_test_config(int64_t d_model, int64_t num_experts, int64_t top_k, int64_t expert_hidden,
                                 Activation activation) {
  return {.num_experts = num_experts, .top_k = top_k, .expert_hidden = expert_hidden, .activation = activation,
          .d_model = d_model};
}

// A transformer's config with these sizes, every other setting (the MoE layers' too) at its default.
inline TransformerConfig transformer_test_config(int64_t vocab_size, int64_t d_model, int64_t n_layers,
                                                 int64_t n_heads, int64_t seq_len) {
  TransformerConfig cfg;
  cfg.vocab_size = vocab_size;
  cfg.d_model = d_model;
  cfg.n_layers = n_layers;
  cfg.n_heads = n_heads;
  cfg.seq_len = seq_len;
  return cfg;
}

}  // namespace moe::test
