// Every op on every device of the build against the CPU (after ggml's test-backend-ops): the same
// inputs run on the CPU and, moved with Tensor::to, on the device under test, and the outputs are
// compared. A device this build or machine lacks is skipped with one line saying so. On the CPU the
// test checks the plumbing (moves, dispatch, outputs coming back intact), not the math, which
// tests/test_ops.cpp checks against references; on a GPU it is the CUDA backend's test.
//
// Forward outputs start as NaN on both devices, so an element the op leaves unwritten fails the
// comparison; gradients start from the same random values, so a backward that overwrites instead of
// accumulating fails too.
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

// Tolerances on |device - cpu| / max(1, |cpu|), from the float32 unit roundoff u = 2^-24 = 6e-8.
// kExact: the same IEEE operations in the same order (copies, selections, one rounding each).
constexpr double kExact = 0.0;
// kRounding: a few float operations per element, which the GPU compiler may fuse into FMAs (one
// rounding fewer) or the device evaluates in another order: a handful of u, 1e-6 with margin.
constexpr double kRounding = 1e-6;
// kSums: sums of up to 8 terms of size ~1 (dot products, norms, GEMMs with K = 8) in another order
// (warp trees, cuBLAS tiles): each of the 8 partial sums rounds once, 8 u * sum|terms| (~8) ~ 4e-6,
// and the libm-free CPU exp (rel. 2e-7) against the GPU's expf (2 ulp) adds ~3e-7: 1e-5.
constexpr double kSums = 1e-5;
// kTensorCoreSums: kSums for bfloat16 products on the GPU, whose tensor cores may truncate the float32
// sums instead of rounding them (up to 2 u per addition): twice kSums.
constexpr double kTensorCoreSums = 2e-5;
// kChained: attention chains two GEMMs through a softmax (and the backward four): two kSums steps.
// At head_dim up to 128 and 50 keys, each backend stays within 1e-5 of the double-precision reference
// (tests/test_model.cpp, CausalAttention), so within 2e-5 of each other as well.
constexpr double kChained = 2e-5;
// kLongChained: kChained's sums over 8192 keys instead of 50: the rounding of sums in another order grows
// like sqrt(terms) (random signs), sqrt(8192 / 50) ~ 13 times kSums' share: 2e-4 with margin.
constexpr double kLongChained = 2e-4;
// kBf16Attention: bfloat16 q, k and v (the same values on both devices; the CPU widens them and computes
// in float32), and on CUDA P, dS and dO rounded to bfloat16 (u = 2^-8) before the products that read
// them: each term of a sum off by up to u/2, in random directions, so a sum of terms of the result's
// size (random inputs, up to 50 keys) by a few u/2 at most: 8 u = 3.1e-2, still far below what a wrong
// index or mask gives (order 1).
constexpr double kBf16Attention = 8.0 / 256;
// kBf16Output: an output rounded to bfloat16 from float32 values within kSums of each other: both round
// to the same value or to neighbours, one bfloat16 ulp apart: at most 2^-7 relative.
constexpr double kBf16Output = 1.0 / 128;

// One op: makes its CPU inputs (deterministic), runs the op on `device` with the inputs moved there,
// and returns its outputs back on the CPU (int32 outputs as float32, exact for small ints).
struct OpCase {
  std::string name;
  double tolerance;  // see the constants above
  std::function<std::vector<Tensor>(Device)> run;
};

Tensor on(Device d, const Tensor& t) { return t.to(d).clone(); }  // a copy: updates must not reach the input
// A forward output: NaN on the device, so unwritten elements show.
Tensor poisoned(Device d, const Shape& s) {
  Tensor t = Tensor::empty(s, DType::F32, d);
  t.fill(std::numeric_limits<float>::quiet_NaN());
  return t;
}
Tensor poisoned_ints(Device d, const Shape& s) {
  return Tensor::from_ints(s, std::vector<int32_t>(numel_of(s), -77)).to(d);
}
// A gradient: the same random start on every device, which the backward adds to.
Tensor grad(Device d, const Shape& s, uint64_t seed) { return normal_tensor(s, 1.f, seed, "grad").to(d); }

// Outputs back on the CPU in float32: int32 exact for small ints, bfloat16 exact always.
std::vector<Tensor> to_host(std::vector<Tensor> outs) {
  for (Tensor& t : outs) {
    t = t.to(Device::CPU);
    if (t.dtype() == DType::F32) continue;
    Tensor f = Tensor::empty(t.shape());
    if (t.dtype() == DType::BF16)
      convert(f, t);
    else
      for (int64_t i = 0; i < t.numel(); ++i) f.f32()[i] = static_cast<float>(t.i32()[i]);
    t = f;
  }
  return outs;
}
// A bfloat16 copy of a CPU float32 tensor, on device d.
Tensor bf16_on(Device d, const Tensor& t) {
  Tensor h = Tensor::empty(t.shape(), DType::BF16);
  convert(h, t);
  return h.to(d);
}
Tensor scalars(const std::vector<double>& values) {
  return Tensor::from({static_cast<int64_t>(values.size())}, std::vector<float>(values.begin(), values.end()));
}

// Causal attention at B sequences of S tokens, H heads of Dh, q, k and v in `inputs` (float32 or
// bfloat16, the same values on both devices), with packed documents' positions or without: out, lse
// and the gradients, which start from random values (the backward accumulates).
std::function<std::vector<Tensor>(Device)> attention_case(int64_t B, int64_t H, int64_t S, int64_t Dh,
                                                          DType inputs = DType::F32, bool documents = false) {
  const Tensor positions = test_document_positions(B, S);
  const std::string tag = "attention" + std::to_string(S) + "x" + std::to_string(Dh);
  const Shape rows{B * S, H * Dh};
  const Tensor q = normal_tensor(rows, 1.f, 15, tag + ".q"), k = normal_tensor(rows, 1.f, 16, tag + ".k");
  const Tensor v = normal_tensor(rows, 1.f, 17, tag + ".v"), dout = normal_tensor(rows, 1.f, 18, tag + ".dout");
  return [=](Device d) {
    Tensor out = poisoned(d, rows), lse = poisoned(d, {B, H, S});
    Tensor dq = grad(d, rows, 1), dk = grad(d, rows, 2), dv = grad(d, rows, 3);
    auto in = [&](const Tensor& t) { return inputs == DType::BF16 ? bf16_on(d, t) : on(d, t); };
    const Tensor qd = in(q), kd = in(k), vd = in(v), pd = on(d, positions);
    const Tensor* pos = documents ? &pd : nullptr;
    causal_attention_forward(out, lse, qd, kd, vd, H, S, pos);
    causal_attention_backward(&dq, &dk, &dv, on(d, dout), qd, kd, vd, out, lse, H, S, pos);
    return to_host({out, lse, dq, dk, dv});
  };
}

std::vector<OpCase> op_cases() {
  const Tensor x = normal_tensor({6, 8}, 1.f, 1, "x"), w = normal_tensor({8, 5}, 0.5f, 2, "w");
  const Tensor b = normal_tensor({5}, 0.5f, 3, "b"), dy5 = normal_tensor({6, 5}, 1.f, 4, "dy5");
  const Tensor dy8 = normal_tensor({6, 8}, 1.f, 5, "dy8"), g = normal_tensor({8}, 1.f, 6, "g");
  const Tensor dy4 = normal_tensor({6, 4}, 1.f, 7, "dy4"), wt = normal_tensor({5, 8}, 0.5f, 11, "wt");
  // Grouped linear: 4 groups of 0, 2, 4 and 0 of x's 6 rows (empty groups first and last, sizes that differ).
  const Tensor w4 = normal_tensor({4, 8, 5}, 0.5f, 25, "w4");
  const std::vector<int64_t> groups = {0, 0, 2, 6, 6};
  const Tensor targets = Tensor::from_ints({6}, {0, 3, 7, -1, 2, 7});
  const Tensor index = Tensor::from_ints({4}, {5, 0, 0, 3});
  const Tensor slot = Tensor::from_ints({3, 2}, {0, 2, 1, -1, 3, 4});
  const Tensor cw = normal_tensor({3, 2}, 1.f, 8, "cw"), rows = normal_tensor({5, 8}, 1.f, 9, "rows");
  const Tensor dy3 = normal_tensor({3, 8}, 1.f, 10, "dy3");
  // Wide rows (more columns than a CUDA block has threads, more than 32 for the column sums).
  const Tensor wide = normal_tensor({3, 700}, 1.f, 12, "wide"), dwide = normal_tensor({3, 700}, 1.f, 13, "dwide");
  const Tensor gwide = normal_tensor({700}, 1.f, 14, "gwide");
  // Rotary: B = 2 sequences of S = 5, H = 2 heads of Dh = 4.
  const Tensor q = normal_tensor({10, 8}, 1.f, 15, "q"), dout = normal_tensor({10, 8}, 1.f, 18, "dout");
  // Router: T = 6 tokens, E = 5 experts; probs a softmax, so top-k has no near-ties to break differently.
  Tensor probs = Tensor::empty({6, 5});
  softmax_forward(probs, normal_tensor({6, 5}, 2.f, 19, "logits"));
  const Tensor logits = normal_tensor({6, 5}, 2.f, 19, "logits"), sbias = normal_tensor({5}, 0.1f, 20, "sbias");
  const Tensor dweight = normal_tensor({6, 2}, 1.f, 21, "dweight");
  Tensor tied_probs = probs.clone();  // expert 3's column all equal: expert choice takes tokens in index order
  for (int64_t t = 0; t < 6; ++t) tied_probs.f32()[t * 5 + 3] = 0.125f;
  const Tensor experts = Tensor::from_ints({6, 2}, {0, 3, 4, 1, 2, 0, 1, 3, 4, 2, 3, 0});
  const Tensor gw = normal_tensor({8, 5}, 1.f, 23, "gw");
  // Group-limited routing: T = 6 tokens, E = 8 experts, scores and bias on grids of 1/8 and 1/16 (exact sums,
  // ties within and between groups).
  Tensor gprobs = Tensor::empty({6, 8}), gbias = Tensor::empty({8});
  for (int64_t i = 0; i < 48; ++i) gprobs.f32()[i] = static_cast<float>((i * 5 + i / 8) % 8 + 1) / 8;
  for (int64_t e = 0; e < 8; ++e) gbias.f32()[e] = static_cast<float>(e % 3 - 1) / 16;
  Tensor second_moment = normal_tensor({8, 5}, 1.f, 24, "v");  // made >= 0 below
  for (int64_t i = 0; i < second_moment.numel(); ++i) second_moment.f32()[i] = std::fabs(second_moment.f32()[i]);
  return {
      {"memory", kExact, [=](Device d) {
         Tensor f = poisoned(d, {3, 7}), c = poisoned(d, {6, 8});
         f.fill(2.5f);
         f.rows(1, 2).zero();
         c.rows(0, 3).copy_from(on(d, x).rows(3, 6));
         c.rows(3, 6).copy_from(on(d, x).rows(0, 3));
         return to_host({f, c, on(d, x).clone()});
       }},
      {"linear", kSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 8}, 1), dw = grad(d, {8, 5}, 2), db = grad(d, {5}, 3);
         const Tensor bd = on(d, b);
         linear_forward(y, on(d, x), on(d, w), &bd);
         linear_backward(&dx, &dw, &db, on(d, dy5), on(d, x), on(d, w));
         return to_host({y, dx, dw, db});
       }},
      {"linear_transposed", kSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 8}, 1), dw = grad(d, {5, 8}, 2);
         linear_transposed_forward(y, on(d, x), on(d, wt));
         linear_transposed_backward(&dx, &dw, on(d, dy5), on(d, x), on(d, wt));
         return to_host({y, dx, dw});
       }},
      {"convert", kExact, [=](Device d) {  // both round to nearest even (the comparison takes no inf or NaN)
         // Ties to even (down, up), a subnormal and a large value.
         Tensor special = Tensor::from({5}, {1.00390625f, -1.01171875f, 1e-40f, 3e38f, -0.f});
         Tensor y = Tensor::empty({6, 8}, DType::BF16, d), ys = Tensor::empty({5}, DType::BF16, d);
         Tensor back = poisoned(d, {6, 8});
         convert(y, on(d, x));
         convert(ys, on(d, special));
         convert(back, bf16_on(d, dy8));
         return to_host({y, ys, back});
       }},
      {"linear_bf16", kTensorCoreSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 8}, 1), dw = grad(d, {8, 5}, 2), db = grad(d, {5}, 3);
         const Tensor bd = on(d, b);
         linear_forward(y, bf16_on(d, x), bf16_on(d, w), &bd);
         linear_backward(&dx, &dw, &db, bf16_on(d, dy5), bf16_on(d, x), bf16_on(d, w));
         return to_host({y, dx, dw, db});
       }},
      {"linear_transposed_bf16", kTensorCoreSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 8}, 1), dw = grad(d, {5, 8}, 2);
         linear_transposed_forward(y, bf16_on(d, x), bf16_on(d, wt));
         linear_transposed_backward(&dx, &dw, bf16_on(d, dy5), bf16_on(d, x), bf16_on(d, wt));
         return to_host({y, dx, dw});
       }},
      {"grouped_linear", kSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 8}, 1), dw = grad(d, {4, 8, 5}, 2);
         grouped_linear_forward(y, on(d, x), groups, on(d, w4));
         grouped_linear_backward(&dx, &dw, on(d, dy5), on(d, x), groups, on(d, w4));
         return to_host({y, dx, dw});
       }},
      {"grouped_linear_bf16", kTensorCoreSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 8}, 1), dw = grad(d, {4, 8, 5}, 2);
         grouped_linear_forward(y, bf16_on(d, x), groups, bf16_on(d, w4));
         grouped_linear_backward(&dx, &dw, bf16_on(d, dy5), bf16_on(d, x), groups, bf16_on(d, w4));
         return to_host({y, dx, dw});
       }},
      {"grouped_linear_one_group", kSums, [=](Device d) {
         const Tensor w1 = w.reshape({1, 8, 5});
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 8}, 1), dw = grad(d, {1, 8, 5}, 2);
         grouped_linear_forward(y, on(d, x), {0, 6}, on(d, w1));
         grouped_linear_backward(&dx, &dw, on(d, dy5), on(d, x), {0, 6}, on(d, w1));
         return to_host({y, dx, dw});
       }},
      {"relu", kExact, [=](Device d) {
         Tensor y = poisoned(d, {6, 8}), dx = grad(d, {6, 8}, 1);
         relu_forward(y, on(d, x));
         relu_backward(dx, on(d, dy8), on(d, x));
         return to_host({y, dx});
       }},
      {"gelu", kSums, [=](Device d) {  // the CPU's fast tanh (abs. 3e-7) against tanhf, times |dy/dx| <= ~2
         Tensor y = poisoned(d, {6, 8}), dx = grad(d, {6, 8}, 1);
         gelu_forward(y, on(d, x));
         gelu_backward(dx, on(d, dy8), on(d, x));
         return to_host({y, dx});
       }},
      {"swiglu", kSums, [=](Device d) {  // the CPU's fast exp (2e-7) against expf in the sigmoid
         Tensor y = poisoned(d, {6, 4}), dx = grad(d, {6, 8}, 1);
         swiglu_forward(y, on(d, x));
         swiglu_backward(dx, on(d, dy4), on(d, x));
         return to_host({y, dx});
       }},
      {"activations_bf16", kBf16Output, [=](Device d) {  // y and dx written in bfloat16
         auto bf16_poisoned = [&](const Shape& shape) {
           Tensor nan = Tensor::empty(shape);
           nan.fill(std::numeric_limits<float>::quiet_NaN());
           return bf16_on(d, nan);
         };
         auto bf16_grad = [&](const Shape& shape, uint64_t seed) {
           return bf16_on(d, normal_tensor(shape, 1.f, seed, "grad"));
         };
         Tensor y_relu = bf16_poisoned({6, 8}), y_gelu = bf16_poisoned({6, 8}), y_swiglu = bf16_poisoned({6, 4});
         Tensor dx_relu = bf16_grad({6, 8}, 1), dx_gelu = bf16_grad({6, 8}, 2), dx_swiglu = bf16_grad({6, 8}, 3);
         relu_forward(y_relu, on(d, x));
         relu_backward(dx_relu, on(d, dy8), on(d, x));
         gelu_forward(y_gelu, on(d, x));
         gelu_backward(dx_gelu, on(d, dy8), on(d, x));
         swiglu_forward(y_swiglu, on(d, x));
         swiglu_backward(dx_swiglu, on(d, dy4), on(d, x));
         return to_host({y_relu, dx_relu, y_gelu, dx_gelu, y_swiglu, dx_swiglu});
       }},
      {"sigmoid", kRounding, [=](Device d) {  // std::exp against expf: an ulp or two, then 2 operations
         Tensor y = poisoned(d, {6, 8}), dx = grad(d, {6, 8}, 1);
         sigmoid_forward(y, on(d, x));
         sigmoid_backward(dx, on(d, dy8), y);
         return to_host({y, dx});
       }},
      {"normalize_rows", kRounding, [=](Device d) {  // the same sequential row sums; FMAs at most
         Tensor y = poisoned(d, {6, 5}), dx = grad(d, {6, 5}, 1);
         normalize_rows_forward(y, on(d, probs));
         normalize_rows_backward(dx, on(d, logits), on(d, probs));
         return to_host({y, dx});
       }},
      {"softmax", kSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 8}), dx = grad(d, {6, 8}, 1), yw = poisoned(d, {3, 700});
         softmax_forward(y, on(d, x));
         softmax_backward(dx, on(d, dy8), y);
         softmax_forward(yw, on(d, wide));
         return to_host({y, dx, yw});
       }},
      {"rmsnorm", kSums, [=](Device d) {
         Tensor y = poisoned(d, {6, 8}), rstd = poisoned(d, {6}), dx = grad(d, {6, 8}, 1), dg = grad(d, {8}, 2);
         rmsnorm_forward(y, rstd, on(d, x), on(d, g), 1e-5f);
         rmsnorm_backward(&dx, &dg, on(d, dy8), on(d, x), on(d, g), rstd);
         return to_host({y, rstd, dx, dg});
       }},
      {"layernorm", kSums, [=](Device d) {  // wide rows: 700 terms per sum, but each sum a mean (/ 700)
         Tensor y = poisoned(d, {3, 700}), mean = poisoned(d, {3}), rstd = poisoned(d, {3});
         Tensor dx = grad(d, {3, 700}, 1), dg = grad(d, {700}, 2), db = grad(d, {700}, 3);
         layernorm_forward(y, mean, rstd, on(d, wide), on(d, gwide), on(d, gwide), 1e-5f);
         layernorm_backward(&dx, &dg, &db, on(d, dwide), on(d, wide), on(d, gwide), mean, rstd);
         return to_host({y, mean, rstd, dx, dg, db});
       }},
      {"cross_entropy", kSums, [=](Device d) {
         Tensor p = poisoned(d, {6, 8}), dl = grad(d, {6, 8}, 1);
         const float loss = cross_entropy_forward(p, on(d, x), on(d, targets));
         cross_entropy_backward(dl, p, on(d, targets), 1.f);
         return to_host({p, dl, scalars({loss})});
       }},
      {"embedding", kRounding, [=](Device d) {  // repeated ids: two additions into one row, in either order
         Tensor y = poisoned(d, {4, 8}), dtable = grad(d, {6, 8}, 1);
         embedding_forward(y, on(d, index), on(d, x));
         embedding_backward(dtable, on(d, dy8).rows(0, 4), on(d, index));
         return to_host({y, dtable});
       }},
      {"gather_scatter_rows", kRounding, [=](Device d) {  // as embedding
         Tensor y = poisoned(d, {4, 8}), dx = grad(d, {6, 8}, 1);
         gather_rows(y, on(d, x), on(d, index));
         scatter_add_rows(dx, y, on(d, index));
         return to_host({y, dx});
       }},
      {"gather_scatter_bf16_rows", kRounding, [=](Device d) {  // bfloat16 rows copied, added into float32
         Tensor y = Tensor::empty({4, 8}, DType::BF16, d), dx = grad(d, {6, 8}, 1);
         gather_rows(y, bf16_on(d, x), on(d, index));
         scatter_add_rows(dx, y, on(d, index));
         return to_host({y, dx});
       }},
      {"combine", kSums, [=](Device d) {
         Tensor y = poisoned(d, {3, 8}), drows = grad(d, {5, 8}, 1), dweights = grad(d, {3, 2}, 2);
         combine_forward(y, on(d, rows), on(d, slot), on(d, cw));
         combine_backward(&drows, &dweights, on(d, dy3), on(d, rows), on(d, slot), on(d, cw));
         return to_host({y, drows, dweights});
       }},
      {"add_scaled", kRounding, [=](Device d) {
         Tensor y = grad(d, {6, 8}, 1);
         add_scaled(y, on(d, x), -0.375f);
         return to_host({y});
       }},
      {"rotary", kRounding, [=](Device d) {  // angles in double on both: the same float cos and sin
         Tensor y = poisoned(d, {10, 8}), dx = grad(d, {10, 8}, 1), in_place = on(d, q);
         rotary_forward(y, on(d, q), 2, 5, 10000.f);
         rotary_forward(in_place, in_place, 2, 5, 10000.f);
         rotary_backward(dx, on(d, dout), 2, 5, 10000.f);
         return to_host({y, in_place, dx});
       }},
      // Blocks of 64 x 128 on the CPU (sequences that end inside a block); on CUDA one block of query rows
      // per sequence, except at S = 8192 (H S = 2^13: two blocks of 4096 rows, the second seeing all keys).
      {"causal_attention", kChained, attention_case(2, 2, 5, 4)},
      {"causal_attention_S50_Dh64", kChained, attention_case(2, 3, 50, 64)},
      {"causal_attention_S37_Dh128", kChained, attention_case(1, 2, 37, 128)},
      {"causal_attention_S37_Dh256", kChained, attention_case(1, 2, 37, 256)},
      {"causal_attention_S8192", kLongChained, attention_case(1, 1, 8192, 8)},
      {"causal_attention_bf16", kBf16Attention, attention_case(2, 3, 50, 64, DType::BF16)},
      {"causal_attention_documents", kChained, attention_case(2, 2, 300, 16, DType::F32, true)},
      {"rotary_documents", kRounding, [=](Device d) {
         const Tensor positions = on(d, test_document_positions(1, 150));
         const Tensor tokens = normal_tensor({150, 8}, 1.f, 19, "rotary.documents");
         Tensor y = poisoned(d, {150, 8}), dx = grad(d, {150, 8}, 1);
         rotary_forward(y, on(d, tokens), 2, 150, 10000.f, &positions);
         rotary_backward(dx, on(d, tokens), 2, 150, 10000.f, &positions);
         return to_host({y, dx});
       }},
      {"rotary_position_offset", kRounding, [=](Device d) {  // decoding: positions 40 .. 44
         Tensor y = poisoned(d, {10, 8});
         rotary_forward(y, on(d, q), 2, 5, 10000.f, nullptr, 40);
         return to_host({y});
       }},
      // A prefill (past 0, 5 new tokens) and a decode step (past 36, 1 new token) over a cache of 2
      // sequences of up to 40 tokens, head_dim 32; the cache's rows past the tokens are NaN, which a
      // query must not read. Sums of up to 37 keys and 32 columns in another order, the CPU's exp against
      // expf: as the causal attention's kChained.
      {"cached_attention", kChained, [=](Device d) {
         Tensor k_cache = normal_tensor({2, 40, 64}, 1.f, 23, "cached.k");
         Tensor v_cache = normal_tensor({2, 40, 64}, 1.f, 23, "cached.v");
         for (Tensor* cache : {&k_cache, &v_cache})
           for (int64_t s = 0; s < 2; ++s) cache->rows(s, s + 1).reshape({40, 64}).rows(37, 40).fill(std::numeric_limits<float>::quiet_NaN());
         const Tensor prefill_q = normal_tensor({10, 64}, 1.f, 23, "cached.q5");
         const Tensor step_q = normal_tensor({2, 64}, 1.f, 23, "cached.q1");
         Tensor prefill = poisoned(d, {10, 64}), step = poisoned(d, {2, 64});
         cached_attention_forward(prefill, on(d, prefill_q), on(d, k_cache), on(d, v_cache), 2, 0);
         cached_attention_forward(step, on(d, step_q), on(d, k_cache), on(d, v_cache), 2, 36);
         return to_host({prefill, step});
       }},
      {"topk", kRounding, [=](Device d) {  // the same choices (ids exact), weights one division apart
         Tensor e1 = poisoned_ints(d, {6, 2}), w1 = poisoned(d, {6, 2}), e2 = poisoned_ints(d, {6, 3});
         Tensor w2 = poisoned(d, {6, 3}), dp = grad(d, {6, 5}, 1);
         Tensor e3 = poisoned_ints(d, {6, 2}), w3 = poisoned(d, {6, 2});
         const Tensor bias = on(d, sbias);
         topk_forward(e1, w1, on(d, probs), 2, true, nullptr);
         topk_forward(e2, w2, on(d, probs), 3, false, &bias);
         topk_forward(e3, w3, on(d, probs), 2, true, &bias, 2.5f);  // with the routed scaling factor
         topk_backward(dp, on(d, dweight), e1, w1, on(d, probs), true);
         topk_backward(dp, on(d, dweight), on(d, experts), w1, on(d, probs), false);
         topk_backward(dp, on(d, dweight), e3, w3, on(d, probs), true, 2.5f);
         topk_backward(dp, on(d, dweight), on(d, experts), w1, on(d, probs), false, 2.5f);
         return to_host({e1, w1, e2, w2, e3, w3, dp});
       }},
      // Rows whose biased choice has underflowed probabilities (0, then subnormal: equal weights 1/k, no
      // gradient) next to a normal row; under flush-to-zero the subnormal sum is 0, the same case.
      {"topk_underflow", kRounding, [=](Device d) {
         const Tensor under = Tensor::from({3, 3}, {1.f, 0.f, 0.f, 1.f, 3e-40f, 1e-40f, 0.5f, 0.3f, 0.2f});
         const Tensor bias = Tensor::from({3}, {0.f, 2.f, 2.f}).to(d);
         Tensor e = poisoned_ints(d, {3, 2}), weight = poisoned(d, {3, 2}), dp = grad(d, {3, 3}, 1);
         topk_forward(e, weight, on(d, under), 2, true, &bias);
         topk_backward(dp, on(d, dweight.rows(0, 3)), e, weight, on(d, under), true);
         return to_host({e, weight, dp});
       }},
      {"expert_choice_topk", kExact, [=](Device d) {  // a selection: the same token ids
         Tensor all = poisoned_ints(d, {5, 6}), some = poisoned_ints(d, {5, 2});
         expert_choice_topk(all, on(d, tied_probs));
         expert_choice_topk(some, on(d, probs));
         return to_host({all, some});
       }},
      {"static_route", kExact, [=](Device d) {  // a lookup: the same ids, weights 1/k
         const Tensor routes = Tensor::from_ints({4, 2}, {0, 1, 3, 2, 2, 0, 1, 3});
         Tensor e = poisoned_ints(d, {6, 2}), weight = poisoned(d, {6, 2});
         static_route_forward(e, weight, on(d, routes), on(d, Tensor::from_ints({6}, {3, 0, 1, 1, 2, 0})));
         return to_host({e, weight});
       }},
      {"group_limit", kExact, [=](Device d) {  // the same float additions and comparisons (core/group_limit.h)
         Tensor l1 = poisoned(d, {6, 8}), l2 = poisoned(d, {6, 8}), l3 = poisoned(d, {6, 8});
         Tensor e1 = poisoned_ints(d, {6, 3}), w1 = poisoned(d, {6, 3});
         const Tensor bias = on(d, gbias);
         group_limit_forward(l1, on(d, gprobs), nullptr, 4, 2, 2);
         group_limit_forward(l2, on(d, gprobs), &bias, 4, 1, 1);
         group_limit_forward(l3, on(d, gprobs), &bias, 8, 3, 2);  // groups of one expert
         topk_forward(e1, w1, l1, 3, false, &bias);  // weights copied: exact
         std::vector<Tensor> out = to_host({l1, l2, l3, e1, w1});
         for (int i = 0; i < 3; ++i)  // -infinity (a dropped group) as -1: the comparison takes no infinity
           for (int64_t j = 0; j < out[i].numel(); ++j)
             if (std::isinf(out[i].f32()[j])) out[i].f32()[j] = -1.f;
         return out;
       }},
      {"jitter", kRounding, [=](Device d) {  // the same generator; lo + (hi - lo) u fused or not: 1 u
         Tensor y = poisoned(d, {6, 8}), noise = poisoned(d, {6, 8}), dx = grad(d, {6, 8}, 1);
         jitter_forward(y, noise, on(d, x), 0.25f, 1234, 777);
         jitter_backward(dx, on(d, dy8), noise);
         return to_host({y, noise, dx});
       }},
      {"load_balance", kRounding, [=](Device d) {  // double sums rounded to float for the comparison
         std::vector<double> prob_sum, count;
         load_balance_sums(prob_sum, count, on(d, probs), on(d, experts));
         Tensor dp = grad(d, {6, 5}, 1);
         load_balance_backward(dp, count, 12.0, 6.0, 0.01, 1.5);
         return to_host({scalars(prob_sum), scalars(count), dp});
       }},
      {"load_balance_groups", kRounding, [=](Device d) {  // 3 groups (sequences) of 2 tokens
         std::vector<double> prob_sum, count;
         load_balance_sums(prob_sum, count, on(d, probs), on(d, experts), 3);
         Tensor dp = grad(d, {6, 5}, 1);
         load_balance_backward(dp, count, 4.0, 2.0, 0.01, 1.5);
         return to_host({scalars(prob_sum), scalars(count), dp});
       }},
      {"z_loss", kRounding, [=](Device d) {  // double on both; exp and log within an ulp of double
         const double z = z_loss_forward(on(d, logits), 0.001, 6.0);
         Tensor dl = grad(d, {6, 5}, 1);
         z_loss_backward(dl, on(d, logits), on(d, probs), 0.001, 6.0, 2.0);
         return to_host({scalars({z * 1000}), dl});
       }},
      {"index_ramp", kExact, [=](Device d) {
         Tensor a = poisoned_ints(d, {7}), c = poisoned_ints(d, {9});
         index_ramp(a, 0, 1, 3);
         index_ramp(c, 2, 3, 9);
         return to_host({a, c});
       }},
      {"first_nonfinite", kExact, [=](Device d) {
         Tensor bad = x.clone();
         bad.f32()[13] = std::numeric_limits<float>::infinity();
         bad.f32()[29] = std::nanf("");
         return to_host({scalars({double(first_nonfinite(on(d, bad))), double(first_nonfinite(on(d, x)))})});
       }},
      {"adamw_update", kRounding, [=](Device d) {
         Tensor wd = on(d, w), m = grad(d, {8, 5}, 1), vd = on(d, second_moment);
         adamw_update(wd, m, vd, on(d, gw), AdamWScalars{1e-2f, 0.9f, 0.95f, 0.1f, 0.05f, 1e-8f, 0.1f});
         return to_host({wd, m, vd});
       }},
      {"sgd_update", kRounding, [=](Device d) {
         Tensor wd = on(d, w), buf = grad(d, {8, 5}, 1);
         sgd_update(wd, buf, on(d, w), 0.05f, 0.9f, 0.01f);
         return to_host({wd, buf});
       }},
      {"sum_of_squares", kRounding, [=](Device d) {  // double sums in another order, rounded to float
         const Tensor big = normal_tensor({300001}, 1.f, 22, "big");  // several blocks per reduction thread
         return to_host({scalars({sum_of_squares(on(d, x)), sum_of_squares(on(d, big)) / 300001})});
       }},
      {"scale_in_place", kExact, [=](Device d) {
         Tensor wd = on(d, w);
         scale_in_place(wd, 0.125);
         return to_host({wd});
       }},
      {"selection_bias_update", kExact, [=](Device d) {
         // Loads below, above and at the mean (6): each direction of the step, and no step.
         Tensor bias = on(d, b);
         selection_bias_update(bias, {2, 9, 6, 10, 3}, 0.25);
         return to_host({bias});
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
  for (const OpCase& c : op_cases()) {
    // The CPU against itself must agree bit for bit; another device within the case's tolerance.
    const double tolerance = device == Device::CPU ? 0.0 : c.tolerance;
    const std::vector<Tensor> want = c.run(Device::CPU), got = c.run(device);
    ASSERT_EQ(want.size(), got.size()) << c.name;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i].device(), Device::CPU) << c.name << " output " << i;
      ASSERT_EQ(got[i].shape(), want[i].shape()) << c.name << " output " << i;
      EXPECT_GT(max_abs(want[i]), 0.0) << c.name << " output " << i << " is all zeros: the comparison proves nothing";
      double worst = 0;
      int64_t worst_at = -1;
      for (int64_t e = 0; e < want[i].numel(); ++e) {
        const double error = std::fabs(double(got[i].f32()[e]) - want[i].f32()[e]) /
                             std::max(1.0, std::fabs(double(want[i].f32()[e])));
        if (!(error <= worst)) {  // NaN (an unwritten or broken element) counts as the worst
          worst = std::isnan(error) ? std::numeric_limits<double>::infinity() : error;
          worst_at = e;
        }
      }
      EXPECT_LE(worst, tolerance) << c.name << " output " << i << " on " << to_string(device) << ", element "
                                  << worst_at;
    }
  }
}

// An index out of range is refused before anything is written, with the CPU's message.
TEST_P(BackendOps, IndexErrorsNameThePositionAsOnTheCpu) {
  const Device d = GetParam();
  const Tensor x = normal_tensor({4, 3}, 1.f, 1, "x").to(d);
  Tensor y = Tensor::zeros({3, 3}, DType::F32, d);
  const Tensor bad_index = Tensor::from_ints({3}, {1, 4, -2}).to(d);
  EXPECT_CONTAINS(error_message([&] { gather_rows(y, x, bad_index); }),
                  "gather_rows: index[1] = 4 is out of range, expected [0, 4)");
  Tensor probs = Tensor::zeros({3, 3}, DType::F32, d);
  EXPECT_CONTAINS(error_message([&] { cross_entropy_forward(probs, y, Tensor::from_ints({3}, {0, -1, 3}).to(d)); }),
                  "cross_entropy_forward: targets[2] = 3 is out of range, expected [-1, 3) (-1 marks an ignored row)");
  Tensor combined = Tensor::zeros({2, 3}, DType::F32, d);
  EXPECT_CONTAINS(error_message([&] { combine_forward(combined, x, Tensor::from_ints({2, 2}, {0, -1, 9, 1}).to(d),
                                                      Tensor::zeros({2, 2}, DType::F32, d)); }),
                  "combine_forward: slot[1, 0] = 9 is out of range, expected [-1, 4) (-1 contributes nothing)");
  EXPECT_EQ(max_abs(y.to(Device::CPU)), 0.0) << "gather_rows wrote before refusing";
  const Tensor positions = Tensor::from_ints({4}, {0, 1, 0, 4}).to(d);  // one sequence of S = 4
  Tensor rotated = Tensor::zeros({4, 2}, DType::F32, d);
  EXPECT_CONTAINS(error_message([&] { rotary_forward(rotated, rotated, 1, 4, 10000.f, &positions); }),
                  "rotary_forward: positions[3] = 4 is out of range, expected [0, 4) (a token's position in its "
                  "document is at most its position in the sequence)");
}

INSTANTIATE_TEST_SUITE_P(Devices, BackendOps, ::testing::Values(Device::CPU, Device::CUDA),
                         [](const ::testing::TestParamInfo<Device>& param) {
                           return std::string(to_string(param.param));
                         });

// MOE_HAVE_CUDA is what CMake decided (CUDA toolkit found and MOE_CUDA not OFF); the backend linked in
// must be the one it names: the kernels of core/cuda/ answer an allocation without a device with "no
// CUDA device", the stubs of core/no_gpu/ with "has no CUDA implementation in this build".
TEST(BackendOps, TheCudaBackendIsTheOneCMakeChose) {
  EXPECT_TRUE(device_available(Device::CPU));
  if (!MOE_HAVE_CUDA) {
    EXPECT_FALSE(device_available(Device::CUDA));
    EXPECT_CONTAINS(error_message([] { Tensor::empty({2}, DType::F32, Device::CUDA); }),
                    "allocate_bytes has no CUDA implementation in this build");
  } else if (!device_available(Device::CUDA)) {
    EXPECT_CONTAINS(error_message([] { Tensor::empty({2}, DType::F32, Device::CUDA); }),
                    "allocate_bytes: no CUDA device (cudaGetDeviceCount");
  } else {
    Tensor t = Tensor::from({3}, {1.f, 2.f, 3.f}).to(Device::CUDA);
    EXPECT_EQ(floats_of(t.to(Device::CPU)), (std::vector<float>{1.f, 2.f, 3.f}));
  }
}

}  // namespace
}  // namespace moe
