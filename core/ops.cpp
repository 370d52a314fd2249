// Public op front-ends: validate shapes, dtypes and devices, then run the op on the tensors' device.
#include "core/ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/check.h"
#include "core/optim_ops.h"

// Runs moe::cpu::op or moe::cuda::op with the same arguments, by `device`; returns what the op returns.
#define MOE_DISPATCH(device, op, ...) ((device) == Device::CPU ? cpu::op(__VA_ARGS__) : cuda::op(__VA_ARGS__))

namespace moe {

namespace {

void require_defined(const char* op, const char* arg, const Tensor& t) {
  MOE_REQUIRE(t.defined(), op, ": ", arg, " is an undefined (empty) tensor");
}

void require_f32(const char* op, const char* arg, const Tensor& t, const Shape& shape) {
  require_shape(op, arg, t, shape);
  require_dtype(op, arg, t, DType::F32);
}

void require_i32(const char* op, const char* arg, const Tensor& t, const Shape& shape) {
  require_shape(op, arg, t, shape);
  require_dtype(op, arg, t, DType::I32);
}

// An int32 tensor of this rank (index tensors: ids, rows, slots); its shape is then a reference.
void require_i32_rank(const char* op, const char* arg, const Tensor& t, int rank) {
  require_rank(op, arg, t, rank);
  require_dtype(op, arg, t, DType::I32);
}

// x: a defined float32 tensor of any shape; every other tensor of the call must have its shape.
void require_f32_tensor(const char* op, const char* arg, const Tensor& x) {
  require_defined(op, arg, x);
  require_dtype(op, arg, x, DType::F32);
}

// A rank-2 float32 tensor; its shape is then the reference for the op's other arguments.
void require_f32_matrix(const char* op, const char* arg, const Tensor& t) {
  require_rank(op, arg, t, 2);
  require_dtype(op, arg, t, DType::F32);
}

void require_eps(const char* op, float eps) {
  MOE_REQUIRE(std::isfinite(eps) && eps >= 0.f, op, ": eps = ", eps, " must be finite and >= 0");
}

// The input of a norm: x (N, C) float32 with C >= 1, and its gain g (C).
void require_norm_input(const char* op, const Tensor& x, const Tensor& g) {
  require_f32_matrix(op, "x", x);
  MOE_REQUIRE(x.dim(1) >= 1, op, ": x has shape ", to_string(x.shape()),
              ", expected at least one feature (column) to normalise over");
  require_f32(op, "g", g, {x.dim(1)});
}

// An input of a linear op's matrix products (x, w, and dy in the backward) has x's dtype: float32, or
// bfloat16 for mixed precision.
void require_product_dtype(const char* op, const char* arg, const Tensor& t, const Tensor& x) {
  MOE_REQUIRE(t.dtype() == x.dtype(), op, ": ", arg, " has dtype ", to_string(t.dtype()), " but x has ",
              to_string(x.dtype()), "; x, w and dy must all be float32 or all bfloat16");
}

// A float32 or bfloat16 tensor (the linear ops' product inputs, the MoE rows).
void require_float_dtype(const char* op, const char* arg, const Tensor& t) {
  MOE_REQUIRE(t.dtype() == DType::F32 || t.dtype() == DType::BF16, op, ": ", arg, " has dtype ", to_string(t.dtype()),
              ", expected float32 or bfloat16");
}

// x (N, in) of a linear op: a float32 or bfloat16 matrix; the other inputs of its products take its dtype.
void require_product_matrix(const char* op, const Tensor& x) {
  require_rank(op, "x", x, 2);
  require_float_dtype(op, "x", x);
}

// x (N, in) and w (in, out), or w (out, in) when `transposed`: matrices of matching sizes, both float32
// or both bfloat16.
void require_linear_inputs(const char* op, const Tensor& x, const Tensor& w, bool transposed) {
  require_product_matrix(op, x);
  require_rank(op, "w", w, 2);
  const int64_t in = x.dim(1), out = w.dim(transposed ? 0 : 1);
  require_shape(op, "w", w, transposed ? Shape{out, in} : Shape{in, out});
  require_product_dtype(op, "w", w, x);
}

// dy (N, out) of a linear op's backward, in x's dtype.
void require_linear_dy(const char* op, const Tensor& dy, const Tensor& x, int64_t out) {
  require_shape(op, "dy", dy, {x.dim(0), out});
  require_product_dtype(op, "dy", dy, x);
}

// x (M, in) and w (G, in, out): the inputs of a grouped linear, both float32 or both bfloat16; and offset,
// G + 1 non-decreasing row starts from 0 to M.
void require_grouped_linear_inputs(const char* op, const Tensor& x, const std::vector<int64_t>& offset,
                                   const Tensor& w) {
  require_product_matrix(op, x);
  require_rank(op, "w", w, 3);
  require_shape(op, "w", w, {w.dim(0), x.dim(1), w.dim(2)});
  require_product_dtype(op, "w", w, x);
  const int64_t G = w.dim(0), M = x.dim(0);
  const std::string problem = [&]() -> std::string {  // empty when offset is good
    if (static_cast<int64_t>(offset.size()) != G + 1) return detail::concat("offset has ", offset.size(), " entries");
    if (offset[0] != 0) return detail::concat("offset[0] = ", offset[0]);
    for (int64_t g = 1; g <= G; ++g)
      if (offset[g] < offset[g - 1])
        return detail::concat("offset[", g, "] = ", offset[g], " is below offset[", g - 1, "] = ", offset[g - 1]);
    if (offset[G] != M) return detail::concat("offset[", G, "] = ", offset[G]);
    return {};
  }();
  MOE_REQUIRE(problem.empty(), op, ": ", problem, "; expected G + 1 = ", G + 1,
              " non-decreasing row starts from 0 to M = ", M, " (G = w.dim(0), M = x.dim(0))");
}

}  // namespace

// ---- precision ----

void convert(Tensor& y, const Tensor& x) {
  const char* op = "convert";
  require_defined(op, "x", x);
  require_shape(op, "y", y, x.shape());
  MOE_REQUIRE((x.dtype() == DType::F32 && y.dtype() == DType::BF16) ||
                  (x.dtype() == DType::BF16 && y.dtype() == DType::F32),
              op, ": x is ", to_string(x.dtype()), " and y is ", to_string(y.dtype()),
              "; expected float32 to bfloat16 or bfloat16 to float32");
  require_same_device(op, {&y, &x});
  MOE_DISPATCH(x.device(), convert, y, x);
}

const Tensor& as_dtype(const Tensor& x, Tensor& buffer, DType dtype) {
  if (x.dtype() == dtype) return x;
  resize_on(buffer, x.shape(), x.device(), dtype);
  convert(buffer, x);
  return buffer;
}

// ---- linear ----

void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
  const char* op = "linear_forward";
  require_linear_inputs(op, x, w, false);
  const int64_t N = x.dim(0), out = w.dim(1);
  if (b != nullptr) require_f32(op, "b", *b, {out});
  require_f32(op, "y", y, {N, out});
  require_same_device(op, {&y, &x, &w, b});
  MOE_DISPATCH(x.device(), linear_forward, y, x, w, b);
}

void linear_backward(Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_backward";
  require_linear_inputs(op, x, w, false);
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(1);
  require_linear_dy(op, dy, x, out);
  if (dx != nullptr) require_f32(op, "dx", *dx, {N, in});
  if (dw != nullptr) require_f32(op, "dw", *dw, {in, out});
  if (db != nullptr) require_f32(op, "db", *db, {out});
  require_same_device(op, {&dy, &x, &w, dx, dw, db});
  MOE_DISPATCH(x.device(), linear_backward, dx, dw, db, dy, x, w);
}

void grouped_linear_forward(Tensor& y, const Tensor& x, const std::vector<int64_t>& offset, const Tensor& w) {
  const char* op = "grouped_linear_forward";
  require_grouped_linear_inputs(op, x, offset, w);
  require_f32(op, "y", y, {x.dim(0), w.dim(2)});
  require_same_device(op, {&y, &x, &w});
  MOE_DISPATCH(x.device(), grouped_linear_forward, y, x, offset, w);
}

void grouped_linear_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x,
                             const std::vector<int64_t>& offset, const Tensor& w) {
  const char* op = "grouped_linear_backward";
  require_grouped_linear_inputs(op, x, offset, w);
  require_linear_dy(op, dy, x, w.dim(2));
  if (dx != nullptr) require_f32(op, "dx", *dx, x.shape());
  if (dw != nullptr) require_f32(op, "dw", *dw, w.shape());
  require_same_device(op, {&dy, &x, &w, dx, dw});
  MOE_DISPATCH(x.device(), grouped_linear_backward, dx, dw, dy, x, offset, w);
}

// ---- elementwise activations: any shape, y and dy shaped like x ----

namespace {
// An elementwise op's output: y (forward) or dx (backward), of this shape; float32, or bfloat16 too where
// `bf16` (the activations: core/ops.h).
void require_elementwise_output(const char* op, const char* arg, const Tensor& t, const Shape& shape, bool bf16) {
  require_shape(op, arg, t, shape);
  if (bf16)
    require_float_dtype(op, arg, t);
  else
    require_dtype(op, arg, t, DType::F32);
}

void check_elementwise_forward(const char* op, const Tensor& y, const Tensor& x, bool bf16_y) {
  require_f32_tensor(op, "x", x);
  require_elementwise_output(op, "y", y, x.shape(), bf16_y);
  require_same_device(op, {&y, &x});
}

void check_elementwise_backward(const char* op, const Tensor& dx, const Tensor& dy, const Tensor& x, bool bf16_dx) {
  require_f32_tensor(op, "x", x);
  require_f32(op, "dy", dy, x.shape());
  require_elementwise_output(op, "dx", dx, x.shape(), bf16_dx);
  require_same_device(op, {&dx, &dy, &x});
}
}  // namespace

void relu_forward(Tensor& y, const Tensor& x) {
  check_elementwise_forward("relu_forward", y, x, true);
  MOE_DISPATCH(x.device(), relu_forward, y, x);
}

void relu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  check_elementwise_backward("relu_backward", dx, dy, x, true);
  MOE_DISPATCH(x.device(), relu_backward, dx, dy, x);
}

void gelu_forward(Tensor& y, const Tensor& x) {
  check_elementwise_forward("gelu_forward", y, x, true);
  MOE_DISPATCH(x.device(), gelu_forward, y, x);
}

void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  check_elementwise_backward("gelu_backward", dx, dy, x, true);
  MOE_DISPATCH(x.device(), gelu_backward, dx, dy, x);
}

void sigmoid_forward(Tensor& y, const Tensor& x) {
  check_elementwise_forward("sigmoid_forward", y, x, false);
  MOE_DISPATCH(x.device(), sigmoid_forward, y, x);
}

void sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  check_elementwise_backward("sigmoid_backward", dx, dy, y, false);
  MOE_DISPATCH(y.device(), sigmoid_backward, dx, dy, y);
}

// ---- swiglu: x (N, 2h) = [gate | up], y (N, h) ----

namespace {
void require_gate_up_pairs(const char* op, const Tensor& x) {
  require_f32_matrix(op, "x", x);
  MOE_REQUIRE(x.dim(1) % 2 == 0, op, ": x has shape ", to_string(x.shape()),
              ", expected an even number of columns ([gate | up] halves)");
}
}  // namespace

void swiglu_forward(Tensor& y, const Tensor& x) {
  const char* op = "swiglu_forward";
  require_gate_up_pairs(op, x);
  require_elementwise_output(op, "y", y, {x.dim(0), x.dim(1) / 2}, true);
  require_same_device(op, {&y, &x});
  MOE_DISPATCH(x.device(), swiglu_forward, y, x);
}

void swiglu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "swiglu_backward";
  require_gate_up_pairs(op, x);
  require_f32(op, "dy", dy, {x.dim(0), x.dim(1) / 2});
  require_elementwise_output(op, "dx", dx, x.shape(), true);
  require_same_device(op, {&dx, &dy, &x});
  MOE_DISPATCH(x.device(), swiglu_backward, dx, dy, x);
}

// ---- softmax ----

void softmax_forward(Tensor& y, const Tensor& x) {
  const char* op = "softmax_forward";
  require_f32_matrix(op, "x", x);
  require_f32(op, "y", y, x.shape());
  require_same_device(op, {&y, &x});
  MOE_DISPATCH(x.device(), softmax_forward, y, x);
}

void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
  const char* op = "softmax_backward";
  require_f32_matrix(op, "y", y);
  require_f32(op, "dy", dy, y.shape());
  require_f32(op, "dx", dx, y.shape());
  require_same_device(op, {&dx, &dy, &y});
  MOE_DISPATCH(y.device(), softmax_backward, dx, dy, y);
}

void normalize_rows_forward(Tensor& y, const Tensor& x) {
  const char* op = "normalize_rows_forward";
  require_f32_matrix(op, "x", x);
  require_f32(op, "y", y, x.shape());
  require_same_device(op, {&y, &x});
  MOE_DISPATCH(x.device(), normalize_rows_forward, y, x);
}

void normalize_rows_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const char* op = "normalize_rows_backward";
  require_f32_matrix(op, "x", x);
  require_f32(op, "dy", dy, x.shape());
  require_f32(op, "dx", dx, x.shape());
  require_same_device(op, {&dx, &dy, &x});
  MOE_DISPATCH(x.device(), normalize_rows_backward, dx, dy, x);
}

// ---- norms ----

void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& g, float eps) {
  const char* op = "rmsnorm_forward";
  require_norm_input(op, x, g);
  const int64_t N = x.dim(0), C = x.dim(1);
  require_f32(op, "y", y, {N, C});
  require_f32(op, "rstd", rstd, {N});
  require_eps(op, eps);
  require_same_device(op, {&y, &rstd, &x, &g});
  MOE_DISPATCH(x.device(), rmsnorm_forward, y, rstd, x, g, eps);
}

void rmsnorm_backward(Tensor* dx, Tensor* dg, const Tensor& dy, const Tensor& x, const Tensor& g,
                      const Tensor& rstd) {
  const char* op = "rmsnorm_backward";
  require_norm_input(op, x, g);
  const int64_t N = x.dim(0), C = x.dim(1);
  require_f32(op, "rstd", rstd, {N});
  require_f32(op, "dy", dy, {N, C});
  if (dx != nullptr) require_f32(op, "dx", *dx, {N, C});
  if (dg != nullptr) require_f32(op, "dg", *dg, {C});
  require_same_device(op, {&dy, &x, &g, &rstd, dx, dg});
  MOE_DISPATCH(x.device(), rmsnorm_backward, dx, dg, dy, x, g, rstd);
}

void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& g,
                       const Tensor& b, float eps) {
  const char* op = "layernorm_forward";
  require_norm_input(op, x, g);
  const int64_t N = x.dim(0), C = x.dim(1);
  require_f32(op, "b", b, {C});
  require_f32(op, "y", y, {N, C});
  require_f32(op, "mean", mean, {N});
  require_f32(op, "rstd", rstd, {N});
  require_eps(op, eps);
  require_same_device(op, {&y, &mean, &rstd, &x, &g, &b});
  MOE_DISPATCH(x.device(), layernorm_forward, y, mean, rstd, x, g, b, eps);
}

void layernorm_backward(Tensor* dx, Tensor* dg, Tensor* db, const Tensor& dy, const Tensor& x,
                        const Tensor& g, const Tensor& mean, const Tensor& rstd) {
  const char* op = "layernorm_backward";
  require_norm_input(op, x, g);
  const int64_t N = x.dim(0), C = x.dim(1);
  require_f32(op, "mean", mean, {N});
  require_f32(op, "rstd", rstd, {N});
  require_f32(op, "dy", dy, {N, C});
  if (dx != nullptr) require_f32(op, "dx", *dx, {N, C});
  if (dg != nullptr) require_f32(op, "dg", *dg, {C});
  if (db != nullptr) require_f32(op, "db", *db, {C});
  require_same_device(op, {&dy, &x, &g, &mean, &rstd, dx, dg, db});
  MOE_DISPATCH(x.device(), layernorm_backward, dx, dg, db, dy, x, g, mean, rstd);
}

// ---- cross-entropy ----

float cross_entropy_forward(Tensor& probs, const Tensor& logits, const Tensor& targets) {
  const char* op = "cross_entropy_forward";
  require_f32_matrix(op, "logits", logits);
  require_i32(op, "targets", targets, {logits.dim(0)});
  require_f32(op, "probs", probs, logits.shape());
  require_same_device(op, {&probs, &logits, &targets});
  return MOE_DISPATCH(logits.device(), cross_entropy_forward, probs, logits, targets);
}

void cross_entropy_backward(Tensor& dlogits, const Tensor& probs, const Tensor& targets, float dloss) {
  const char* op = "cross_entropy_backward";
  require_f32_matrix(op, "probs", probs);
  require_i32(op, "targets", targets, {probs.dim(0)});
  require_f32(op, "dlogits", dlogits, probs.shape());
  require_same_device(op, {&dlogits, &probs, &targets});
  MOE_DISPATCH(probs.device(), cross_entropy_backward, dlogits, probs, targets, dloss);
}

// ---- embedding and row movement: an int32 index (M) of rows of a float32 (N, C) table ----

namespace {
// table (N, C) of dtype table_dtype, index (M) int32 and rows (M, C) of dtype rows_dtype on one device.
void require_row_lookup(const char* op, const char* table_arg, const Tensor& table, DType table_dtype,
                        const char* index_arg, const Tensor& index, const char* rows_arg, const Tensor& rows,
                        DType rows_dtype) {
  require_rank(op, table_arg, table, 2);
  require_dtype(op, table_arg, table, table_dtype);
  require_i32_rank(op, index_arg, index, 1);
  require_shape(op, rows_arg, rows, {index.dim(0), table.dim(1)});
  require_dtype(op, rows_arg, rows, rows_dtype);
  require_same_device(op, {&rows, &index, &table});
}
}  // namespace

void embedding_forward(Tensor& y, const Tensor& ids, const Tensor& table) {
  require_row_lookup("embedding_forward", "table", table, DType::F32, "ids", ids, "y", y, DType::F32);
  MOE_DISPATCH(table.device(), embedding_forward, y, ids, table);
}

void embedding_backward(Tensor& dtable, const Tensor& dy, const Tensor& ids) {
  require_row_lookup("embedding_backward", "dtable", dtable, DType::F32, "ids", ids, "dy", dy, DType::F32);
  MOE_DISPATCH(dtable.device(), embedding_backward, dtable, dy, ids);
}

void gather_rows(Tensor& y, const Tensor& x, const Tensor& index) {
  const char* op = "gather_rows";
  require_float_dtype(op, "x", x);
  require_row_lookup(op, "x", x, x.dtype(), "index", index, "y", y, x.dtype());
  MOE_DISPATCH(x.device(), gather_rows, y, x, index);
}

void scatter_add_rows(Tensor& dx, const Tensor& dy, const Tensor& index) {
  const char* op = "scatter_add_rows";
  require_float_dtype(op, "dy", dy);
  require_row_lookup(op, "dx", dx, DType::F32, "index", index, "dy", dy, dy.dtype());
  MOE_DISPATCH(dx.device(), scatter_add_rows, dx, dy, index);
}

namespace {
// rows (M, C) float32, slot (T, k) int32 and weights (T, k) float32: the combine's inputs.
void require_combine_inputs(const char* op, const Tensor& rows, const Tensor& slot, const Tensor& weights) {
  require_f32_matrix(op, "rows", rows);
  require_i32_rank(op, "slot", slot, 2);
  require_f32(op, "weights", weights, slot.shape());
}
}  // namespace

void combine_forward(Tensor& y, const Tensor& rows, const Tensor& slot, const Tensor& weights) {
  const char* op = "combine_forward";
  require_combine_inputs(op, rows, slot, weights);
  require_f32(op, "y", y, {slot.dim(0), rows.dim(1)});
  require_same_device(op, {&y, &rows, &slot, &weights});
  MOE_DISPATCH(rows.device(), combine_forward, y, rows, slot, weights);
}

void combine_backward(Tensor* drows, Tensor* dweights, const Tensor& dy, const Tensor& rows,
                      const Tensor& slot, const Tensor& weights) {
  const char* op = "combine_backward";
  require_combine_inputs(op, rows, slot, weights);
  require_f32(op, "dy", dy, {slot.dim(0), rows.dim(1)});
  if (drows != nullptr) require_f32(op, "drows", *drows, rows.shape());
  if (dweights != nullptr) require_f32(op, "dweights", *dweights, slot.shape());
  require_same_device(op, {&dy, &rows, &slot, &weights, drows, dweights});
  MOE_DISPATCH(rows.device(), combine_backward, drows, dweights, dy, rows, slot, weights);
}

// ---- elementwise helper ----

void add_scaled(Tensor& y, const Tensor& x, float alpha) {
  const char* op = "add_scaled";
  require_f32_tensor(op, "y", y);
  require_f32(op, "x", x, y.shape());
  require_same_device(op, {&y, &x});
  MOE_DISPATCH(y.device(), add_scaled, y, x, alpha);
}

// ---- linear with a transposed (out, in) weight ----

void linear_transposed_forward(Tensor& y, const Tensor& x, const Tensor& w) {
  const char* op = "linear_transposed_forward";
  require_linear_inputs(op, x, w, true);
  const int64_t N = x.dim(0), out = w.dim(0);
  require_f32(op, "y", y, {N, out});
  require_same_device(op, {&y, &x, &w});
  MOE_DISPATCH(x.device(), linear_transposed_forward, y, x, w);
}

void linear_transposed_backward(Tensor* dx, Tensor* dw, const Tensor& dy, const Tensor& x, const Tensor& w) {
  const char* op = "linear_transposed_backward";
  require_linear_inputs(op, x, w, true);
  const int64_t N = x.dim(0), in = x.dim(1), out = w.dim(0);
  require_linear_dy(op, dy, x, out);
  if (dx != nullptr) require_f32(op, "dx", *dx, {N, in});
  if (dw != nullptr) require_f32(op, "dw", *dw, {out, in});
  require_same_device(op, {&dy, &x, &w, dx, dw});
  MOE_DISPATCH(x.device(), linear_transposed_backward, dx, dw, dy, x, w);
}

// ---- attention: (B*S, H*Dh) token rows ----

namespace {
// Checks that x is a (B*S, H*Dh) matrix for these n_heads and seq_len; returns Dh.
int64_t require_token_rows(const char* op, const char* arg, const Tensor& x, int64_t n_heads, int64_t seq_len) {
  require_rank(op, arg, x, 2);
  MOE_REQUIRE(n_heads >= 1, op, ": n_heads = ", n_heads, " must be >= 1");
  MOE_REQUIRE(seq_len >= 1, op, ": seq_len = ", seq_len, " must be >= 1");
  MOE_REQUIRE(x.dim(1) % n_heads == 0 && x.dim(1) > 0, op, ": ", arg, " has shape ", to_string(x.shape()),
              ", expected (B * seq_len, n_heads * head_dim) with n_heads = ", n_heads,
              " dividing a positive column count");
  MOE_REQUIRE(x.dim(0) % seq_len == 0, op, ": ", arg, " has shape ", to_string(x.shape()),
              ", expected a row count (B * seq_len) divisible by seq_len = ", seq_len);
  return x.dim(1) / n_heads;
}

void require_rotary(const char* op, const Tensor& x, int64_t n_heads, int64_t seq_len, float theta) {
  const int64_t head_dim = require_token_rows(op, "x", x, n_heads, seq_len);
  require_dtype(op, "x", x, DType::F32);
  MOE_REQUIRE(head_dim % 2 == 0, op, ": head_dim = ", head_dim, " (", x.dim(1), " columns / n_heads = ",
              n_heads, ") must be even: rotary embedding rotates pairs of columns");
  MOE_REQUIRE(std::isfinite(theta) && theta > 0.f, op, ": theta = ", theta, " must be finite and > 0");
}

// q, k, v (B*S, H*Dh) token rows, all float32 or all bfloat16, on one device and lse (B, H, S) float32:
// the attention's inputs.
void require_attention_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& lse, int64_t n_heads, int64_t seq_len) {
  require_token_rows(op, "q", q, n_heads, seq_len);
  require_float_dtype(op, "q", q);
  for (const auto& [arg, t] : {std::pair{"k", &k}, std::pair{"v", &v}}) {
    require_shape(op, arg, *t, q.shape());
    MOE_REQUIRE(t->dtype() == q.dtype(), op, ": ", arg, " has dtype ", to_string(t->dtype()), " but q has ",
                to_string(q.dtype()), "; q, k and v must all be float32 or all bfloat16");
  }
  require_f32(op, "lse", lse, {q.dim(0) / seq_len, n_heads, seq_len});
}

// positions, when given: (N) int32 for the N token rows of x (its values are the backend's check).
void require_positions(const char* op, const Tensor* positions, const Tensor& x) {
  if (positions != nullptr) require_i32(op, "positions", *positions, {x.dim(0)});
}
}  // namespace

void rotary_forward(Tensor& y, const Tensor& x, int64_t n_heads, int64_t seq_len, float theta,
                    const Tensor* positions, int64_t position_offset) {
  const char* op = "rotary_forward";
  require_rotary(op, x, n_heads, seq_len, theta);
  require_f32(op, "y", y, x.shape());
  require_positions(op, positions, x);
  MOE_REQUIRE(position_offset >= 0 && position_offset <= INT32_MAX, op, ": position_offset = ", position_offset,
              " must be in [0, 2^31)");
  require_same_device(op, {&y, &x, positions});
  MOE_DISPATCH(x.device(), rotary_forward, y, x, n_heads, seq_len, theta, positions, position_offset);
}

void rotary_backward(Tensor& dx, const Tensor& dy, int64_t n_heads, int64_t seq_len, float theta,
                     const Tensor* positions) {
  const char* op = "rotary_backward";
  require_rotary(op, dy, n_heads, seq_len, theta);
  require_f32(op, "dx", dx, dy.shape());
  require_positions(op, positions, dy);
  require_same_device(op, {&dx, &dy, positions});
  MOE_DISPATCH(dy.device(), rotary_backward, dx, dy, n_heads, seq_len, theta, positions);
}

void causal_attention_forward(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                              int64_t n_heads, int64_t seq_len, const Tensor* positions) {
  const char* op = "causal_attention_forward";
  require_attention_inputs(op, q, k, v, lse, n_heads, seq_len);
  require_f32(op, "out", out, q.shape());
  require_positions(op, positions, q);
  require_same_device(op, {&out, &lse, &q, &k, &v, positions});
  MOE_DISPATCH(q.device(), causal_attention_forward, out, lse, q, k, v, n_heads, seq_len, positions);
}

void causal_attention_backward(Tensor* dq, Tensor* dk, Tensor* dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                               int64_t n_heads, int64_t seq_len, const Tensor* positions) {
  const char* op = "causal_attention_backward";
  require_attention_inputs(op, q, k, v, lse, n_heads, seq_len);
  require_positions(op, positions, q);
  require_f32(op, "out", out, q.shape());
  require_f32(op, "dout", dout, q.shape());
  if (dq != nullptr) require_f32(op, "dq", *dq, q.shape());
  if (dk != nullptr) require_f32(op, "dk", *dk, q.shape());
  if (dv != nullptr) require_f32(op, "dv", *dv, q.shape());
  require_same_device(op, {&dout, &q, &k, &v, &out, &lse, dq, dk, dv, positions});
  MOE_DISPATCH(q.device(), causal_attention_backward, dq, dk, dv, dout, q, k, v, out, lse, n_heads, seq_len,
               positions);
}

void cached_attention_forward(Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              int64_t n_heads, int64_t past) {
  const char* op = "cached_attention_forward";
  require_rank(op, "k_cache", k_cache, 3);
  const int64_t B = k_cache.dim(0), T = k_cache.dim(1), C = k_cache.dim(2);
  MOE_REQUIRE(B >= 1 && T >= 1, op, ": k_cache has shape ", to_string(k_cache.shape()),
              ", expected (B, T, H * Dh) with B, T >= 1");
  require_f32(op, "k_cache", k_cache, {B, T, C});
  require_f32(op, "v_cache", v_cache, {B, T, C});
  require_rank(op, "q", q, 2);
  MOE_REQUIRE(q.dim(0) % B == 0 && q.dim(1) == C, op, ": q has shape ", to_string(q.shape()),
              ", expected (B * n, ", C, ") with B = ", B, " sequences of the cache");
  require_dtype(op, "q", q, DType::F32);
  MOE_REQUIRE(n_heads >= 1 && C % n_heads == 0, op, ": n_heads = ", n_heads, " must be >= 1 and divide ", C,
              " columns");
  const int64_t n = q.dim(0) / B;
  MOE_REQUIRE(past >= 0 && past + n <= T, op, ": past = ", past, " cached tokens + ", n,
              " new ones exceed the cache's T = ", T, " rows per sequence");
  require_f32(op, "out", out, q.shape());
  require_same_device(op, {&out, &q, &k_cache, &v_cache});
  MOE_DISPATCH(q.device(), cached_attention_forward, out, q, k_cache, v_cache, n_heads, past);
}

// ---- router: top-k, jitter, auxiliary losses ----

namespace {
// An int32 (T, k) tensor of chosen expert ids for the T rows of a (T, E) tensor; returns k.
int64_t require_expert_ids(const char* op, const Tensor& expert, int64_t T) {
  require_i32_rank(op, "expert", expert, 2);
  require_shape(op, "expert", expert, {T, expert.dim(1)});
  return expert.dim(1);
}

void require_finite(const char* op, const char* name, double value) {
  MOE_REQUIRE(std::isfinite(value), op, ": ", name, " = ", value, " must be finite");
}

void require_weight_scale(const char* op, float scale) {
  MOE_REQUIRE(std::isfinite(scale) && scale > 0.f, op, ": scale = ", scale, " must be finite and > 0");
}
}  // namespace

void topk_forward(Tensor& expert, Tensor& weight, const Tensor& probs, int64_t k, bool renormalize,
                  const Tensor* selection_bias, float scale) {
  const char* op = "topk_forward";
  require_f32_matrix(op, "probs", probs);
  require_weight_scale(op, scale);
  const int64_t T = probs.dim(0), E = probs.dim(1);
  MOE_REQUIRE(k >= 1 && k <= E, op, ": k = ", k, " must be in [1, E = ", E, "] (probs has shape ",
              to_string(probs.shape()), ")");
  if (selection_bias != nullptr) require_f32(op, "selection_bias", *selection_bias, {E});
  require_i32(op, "expert", expert, {T, k});
  require_f32(op, "weight", weight, {T, k});
  require_same_device(op, {&expert, &weight, &probs, selection_bias});
  MOE_DISPATCH(probs.device(), topk_forward, expert, weight, probs, k, renormalize, selection_bias, scale);
}

void topk_backward(Tensor& dprobs, const Tensor& dweight, const Tensor& expert, const Tensor& weight,
                   const Tensor& probs, bool renormalize, float scale) {
  const char* op = "topk_backward";
  require_f32_matrix(op, "probs", probs);
  require_weight_scale(op, scale);
  const int64_t T = probs.dim(0);
  const int64_t k = require_expert_ids(op, expert, T);
  require_f32(op, "weight", weight, {T, k});
  require_f32(op, "dweight", dweight, {T, k});
  require_f32(op, "dprobs", dprobs, probs.shape());
  require_same_device(op, {&dprobs, &dweight, &expert, &weight, &probs});
  MOE_DISPATCH(probs.device(), topk_backward, dprobs, dweight, expert, weight, probs, renormalize, scale);
}

void expert_choice_topk(Tensor& token, const Tensor& scores) {
  const char* op = "expert_choice_topk";
  require_f32_matrix(op, "scores", scores);
  require_i32_rank(op, "token", token, 2);
  const int64_t T = scores.dim(0), E = scores.dim(1), C = token.dim(1);
  MOE_REQUIRE(token.dim(0) == E && C <= T, op, ": token has shape ", to_string(token.shape()),
              ", expected (E = ", E, ", C <= T = ", T, ") for scores of shape ", to_string(scores.shape()));
  require_same_device(op, {&token, &scores});
  MOE_DISPATCH(scores.device(), expert_choice_topk, token, scores);
}

void static_route_forward(Tensor& expert, Tensor& weight, const Tensor& routes, const Tensor& token_ids) {
  const char* op = "static_route_forward";
  require_i32_rank(op, "routes", routes, 2);
  require_i32_rank(op, "token_ids", token_ids, 1);
  const int64_t T = token_ids.dim(0), k = routes.dim(1);
  require_i32(op, "expert", expert, {T, k});
  require_f32(op, "weight", weight, {T, k});
  require_same_device(op, {&expert, &weight, &routes, &token_ids});
  MOE_DISPATCH(routes.device(), static_route_forward, expert, weight, routes, token_ids);
}

void group_limit_forward(Tensor& limited, const Tensor& probs, const Tensor* selection_bias, int64_t groups,
                         int64_t top_groups, int64_t terms) {
  const char* op = "group_limit_forward";
  require_f32_matrix(op, "probs", probs);
  const int64_t E = probs.dim(1);
  MOE_REQUIRE(groups >= 1 && E % groups == 0, op, ": groups = ", groups, " must divide E = ", E,
              " (probs has shape ", to_string(probs.shape()), ")");
  MOE_REQUIRE(top_groups >= 1 && top_groups <= groups, op, ": top_groups = ", top_groups, " must be in [1, groups = ",
              groups, "]");
  MOE_REQUIRE(terms == 1 || terms == 2, op, ": terms = ", terms, " must be 1 (max) or 2 (top-2 sum)");
  if (selection_bias != nullptr) require_f32(op, "selection_bias", *selection_bias, {E});
  require_f32(op, "limited", limited, probs.shape());
  require_same_device(op, {&limited, &probs, selection_bias});
  MOE_DISPATCH(probs.device(), group_limit_forward, limited, probs, selection_bias, groups, top_groups, terms);
}

void jitter_forward(Tensor& y, Tensor& noise, const Tensor& x, float eps, uint64_t stream, uint64_t offset) {
  const char* op = "jitter_forward";
  require_f32_matrix(op, "x", x);
  MOE_REQUIRE(std::isfinite(eps) && eps >= 0.f && eps < 1.f, op, ": eps = ", eps, " must be in [0, 1)");
  require_f32(op, "noise", noise, x.shape());
  require_f32(op, "y", y, x.shape());
  require_same_device(op, {&y, &noise, &x});
  MOE_DISPATCH(x.device(), jitter_forward, y, noise, x, eps, stream, offset);
}

void jitter_backward(Tensor& dx, const Tensor& dy, const Tensor& noise) {
  const char* op = "jitter_backward";
  require_f32_matrix(op, "noise", noise);
  require_f32(op, "dy", dy, noise.shape());
  require_f32(op, "dx", dx, noise.shape());
  require_same_device(op, {&dx, &dy, &noise});
  MOE_DISPATCH(noise.device(), jitter_backward, dx, dy, noise);
}

namespace {
// G groups of rows must split T rows evenly.
void require_row_groups(const char* op, int64_t groups, int64_t T) {
  MOE_REQUIRE(groups >= 1 && T % groups == 0, op, ": ", groups, " groups must be >= 1 and divide the ", T,
              " rows");
}
}  // namespace

void load_balance_sums(std::vector<double>& prob_sum, std::vector<double>& choice_count, const Tensor& probs,
                       const Tensor& expert, int64_t groups) {
  const char* op = "load_balance_sums";
  require_f32_matrix(op, "probs", probs);
  require_expert_ids(op, expert, probs.dim(0));
  require_row_groups(op, groups, probs.dim(0));
  require_same_device(op, {&probs, &expert});
  MOE_DISPATCH(probs.device(), load_balance_sums, prob_sum, choice_count, probs, expert, groups);
}

void load_balance_backward(Tensor& dprobs, const std::vector<double>& choice_count, double num_choices,
                           double num_tokens, double coeff, double dloss) {
  const char* op = "load_balance_backward";
  require_f32_matrix(op, "dprobs", dprobs);
  const int64_t E = dprobs.dim(1);
  const int64_t entries = static_cast<int64_t>(choice_count.size());
  MOE_REQUIRE(E >= 1 && entries >= E && entries % E == 0, op, ": choice_count has ", entries,
              " entries, expected a positive multiple of E = ", E, " (dprobs has shape ",
              to_string(dprobs.shape()), ")");
  require_row_groups(op, entries / E, dprobs.dim(0));
  MOE_REQUIRE(std::isfinite(num_choices) && num_choices > 0, op, ": num_choices = ", num_choices,
              " must be finite and > 0");
  MOE_REQUIRE(std::isfinite(num_tokens) && num_tokens > 0, op, ": num_tokens = ", num_tokens,
              " must be finite and > 0");
  require_finite(op, "coeff", coeff);
  require_finite(op, "dloss", dloss);
  MOE_DISPATCH(dprobs.device(), load_balance_backward, dprobs, choice_count, num_choices, num_tokens, coeff, dloss);
}

namespace {
void require_z_loss(const char* op, const Tensor& logits, double coeff, double mean_over) {
  require_f32_matrix(op, "logits", logits);
  MOE_REQUIRE(logits.dim(1) >= 1, op, ": logits has shape ", to_string(logits.shape()),
              ", expected at least one expert (column)");
  require_finite(op, "coeff", coeff);
  MOE_REQUIRE(std::isfinite(mean_over) && mean_over >= 0, op, ": mean_over = ", mean_over,
              " must be finite and >= 0");
}
}  // namespace

double z_loss_forward(const Tensor& logits, double coeff, double mean_over) {
  const char* op = "z_loss_forward";
  require_z_loss(op, logits, coeff, mean_over);
  return MOE_DISPATCH(logits.device(), z_loss_forward, logits, coeff, mean_over);
}

void z_loss_backward(Tensor& dlogits, const Tensor& logits, const Tensor& probs, double coeff,
                     double mean_over, double dloss) {
  const char* op = "z_loss_backward";
  require_z_loss(op, logits, coeff, mean_over);
  require_finite(op, "dloss", dloss);
  require_f32(op, "probs", probs, logits.shape());
  require_f32(op, "dlogits", dlogits, logits.shape());
  require_same_device(op, {&dlogits, &logits, &probs});
  MOE_DISPATCH(logits.device(), z_loss_backward, dlogits, logits, probs, coeff, mean_over, dloss);
}

// ---- index tensors ----

int64_t first_nonfinite(const Tensor& x) {
  require_f32_tensor("first_nonfinite", "x", x);
  return MOE_DISPATCH(x.device(), first_nonfinite, x);
}

void index_ramp(Tensor& index, int64_t start, int64_t step, int64_t period) {
  const char* op = "index_ramp";
  require_i32_rank(op, "index", index, 1);
  MOE_REQUIRE(period >= 1, op, ": period = ", period, " must be >= 1");
  const int64_t N = index.dim(0);
  if (N > 0) {
    // The values run from start to start + step * last; check both ends without overflowing int64.
    constexpr int64_t lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max();
    const int64_t last = std::min(N, period) - 1;
    const bool start_fits = start >= lo && start <= hi;
    const bool step_fits = step >= lo && step <= hi && (last == 0 || step == 0 || last <= (hi - lo) / std::abs(step));
    const int64_t end = start_fits && step_fits ? start + step * last : 0;
    MOE_REQUIRE(start_fits && step_fits && end >= lo && end <= hi, op, ": start + step * (n mod period) with start = ",
                start, ", step = ", step, ", period = ", period, " over ", N, " elements leaves the int32 range");
  }
  MOE_DISPATCH(index.device(), index_ramp, index, start, step, period);
}

// ---- optimizer step (core/optim_ops.h) ----

namespace {
void require_rate(const char* op, const char* name, float value) {
  MOE_REQUIRE(value >= 0.f && value < 1.f, op, ": ", name, " = ", value, " must be in [0, 1)");
}
}  // namespace

void adamw_update(Tensor& w, Tensor& m, Tensor& v, const Tensor& g, const AdamWScalars& s) {
  const char* op = "adamw_update";
  require_f32_tensor(op, "w", w);
  require_f32(op, "m", m, w.shape());
  require_f32(op, "v", v, w.shape());
  require_f32(op, "g", g, w.shape());
  require_finite(op, "lr", s.lr);
  require_rate(op, "beta1", s.beta1);
  require_rate(op, "beta2", s.beta2);
  MOE_REQUIRE(s.bias_correction1 > 0.f && s.bias_correction1 <= 1.f, op, ": bias_correction1 = ",
              s.bias_correction1, " must be in (0, 1] (1 - beta1^step)");
  MOE_REQUIRE(s.bias_correction2 > 0.f && s.bias_correction2 <= 1.f, op, ": bias_correction2 = ",
              s.bias_correction2, " must be in (0, 1] (1 - beta2^step)");
  MOE_REQUIRE(std::isfinite(s.eps) && s.eps > 0.f, op, ": eps = ", s.eps, " must be finite and > 0");
  MOE_REQUIRE(std::isfinite(s.weight_decay) && s.weight_decay >= 0.f, op, ": weight_decay = ", s.weight_decay,
              " must be finite and >= 0");
  require_same_device(op, {&w, &m, &v, &g});
  MOE_DISPATCH(w.device(), adamw_update, w, m, v, g, s);
}

void sgd_update(Tensor& w, Tensor& buf, const Tensor& g, float lr, float momentum, float weight_decay) {
  const char* op = "sgd_update";
  require_f32_tensor(op, "w", w);
  require_f32(op, "buf", buf, w.shape());
  require_f32(op, "g", g, w.shape());
  require_finite(op, "lr", lr);
  require_rate(op, "momentum", momentum);
  MOE_REQUIRE(std::isfinite(weight_decay) && weight_decay >= 0.f, op, ": weight_decay = ", weight_decay,
              " must be finite and >= 0");
  require_same_device(op, {&w, &buf, &g});
  MOE_DISPATCH(w.device(), sgd_update, w, buf, g, lr, momentum, weight_decay);
}

double sum_of_squares(const Tensor& x) {
  require_f32_tensor("sum_of_squares", "x", x);
  return MOE_DISPATCH(x.device(), sum_of_squares, x);
}

void scale_in_place(Tensor& x, double factor) {
  const char* op = "scale_in_place";
  require_f32_tensor(op, "x", x);
  require_finite(op, "factor", factor);
  MOE_DISPATCH(x.device(), scale_in_place, x, factor);
}

void selection_bias_update(Tensor& bias, const std::vector<int64_t>& load, double rate) {
  const char* op = "selection_bias_update";
  require_f32_tensor(op, "bias", bias);
  require_rank(op, "bias", bias, 1);
  MOE_REQUIRE(static_cast<int64_t>(load.size()) == bias.dim(0), op, ": ", load.size(), " loads for bias ",
              to_string(bias.shape()));
  MOE_REQUIRE(std::isfinite(rate) && rate >= 0.0, op, ": rate = ", rate, " must be finite and >= 0");
  MOE_DISPATCH(bias.device(), selection_bias_update, bias, load, rate);
}

}  // namespace moe
