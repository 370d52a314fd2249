// Benchmark of one MoE layer's forward+backward on one process: time per phase, the expert GEMM
// rate against a plain GEMM of the same shapes timed in the same run, and their ratio; with
// --precision bf16 also the float32 layer on the same inputs, and the speed-up.
//
// Figures (GUIDE section 4):
//   expert FLOPs per call = 3 * kept_pairs * 2 * d * h * m   (forward 1x, backward 2x; m = 2 matrices
//                           for ReLU/GELU, 3 for SwiGLU, whose first matrix has 2h columns)
//   expert GFLOP/s        = expert FLOPs / (forward + backward time of the experts phase), median over repeats
//   plain GEMM GFLOP/s    = the same six GEMMs (x W_in, a W_out and their four backward GEMMs) on one
//                           dense block of kept_pairs / E rows, i.e. one average expert, repeated E times,
//                           in the layer's precision (bf16: moe::gemm_bf16 with the exact shape's primitive)
//   non-GEMM share        = (router + permute + combine + losses) / layer time, forward + backward
//   bf16 speed-up         = fp32 layer fwd+bwd time / bf16 layer fwd+bwd time (medians, same inputs)
// Every repeat draws new tokens, so the routing, and each expert's row count, changes as in training:
// a product specialised to an exact row count would be created anew almost every call.
// Results are verified before timing: the layer's output must be finite, the plain GEMM is checked
// against a naive dot product on sampled entries, and a bf16 layer against the fp32 layer (relative RMS
// error below 4 u, u = 2^-8, as tests/test_moe_layer.cpp derives).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/bfloat16.h"
#include "core/check.h"
#include "core/command_line.h"
#include "core/cpu/gemm.h"
#include "core/moe/moe_layer.h"
#include "core/random.h"
#include "core/timer.h"

#include "bench_util.h"

namespace {

using bench::median;

bench::LayerArgs parse(int argc, char** argv) {
  bench::LayerArgs a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    MOE_REQUIRE(s == "--help" || i + 1 < argc, s, " needs a value; see --help");
    if (s == "--help") {
      std::printf("usage: bench-moe-layer [--d 512] [--h 2048] [--experts 8] [--topk 2] [--tokens 4096]\n"
                  "         [--capacity-factor 1.25] [--activation gelu|relu|swiglu] [--precision fp32|bf16]\n"
                  "         [--threads 1] [--warmup 2] [--repeats 7]\n");
      std::exit(0);
    }
    const char* v = argv[++i];
    if (!bench::parse_layer_arg(s, v, a)) throw moe::InvalidArgument("unknown argument '" + s + "'; see --help");
  }
  return a;
}

// One product C (M, N) float32 = op(A) op(B) + beta C: moe::gemm on the float32 operands, or moe::gemm_bf16
// on their bfloat16 copies. Operands are (float32, bfloat16) pairs of the same values' buffers.
struct Operand {
  const float* f32;
  const uint16_t* bf16;
};
void product(bool bf16, bool ta, bool tb, int64_t M, int64_t N, int64_t K, Operand A, int64_t lda, Operand B,
             int64_t ldb, float beta, float* C, int64_t ldc) {
  if (bf16)
    moe::gemm_bf16(ta, tb, M, N, K, A.bf16, lda, B.bf16, ldb, beta, C, ldc);
  else
    moe::gemm(ta, tb, M, N, K, 1.f, A.f32, lda, B.f32, ldb, beta, C, ldc);
}

// A plain dense FFN of `rows` rows: its operands (float32 and bfloat16 copies) and outputs.
struct PlainFfn {
  int64_t rows, d, in_cols, h;
  std::vector<float> x, w1, act, w2, dy, out_pre, out_y, gw1, gw2;
  std::vector<uint16_t> x16, w1_16, act16, w2_16, dy16;

  PlainFfn(int64_t rows_, int64_t d_, int64_t in_cols_, int64_t h_) : rows(rows_), d(d_), in_cols(in_cols_), h(h_) {
    auto fill = [](std::vector<float>& v, std::vector<uint16_t>& v16, int64_t n) {
      v.assign(n, 0.01f);
      v16.assign(n, moe::bf16_from_float(0.01f));
    };
    fill(x, x16, rows * d), fill(w1, w1_16, d * in_cols), fill(act, act16, rows * in_cols);
    fill(w2, w2_16, h * d), fill(dy, dy16, rows * d);
    out_pre.assign(rows * in_cols, 0.f), out_y.assign(rows * d, 0.f), gw1.assign(d * in_cols, 0.f);
    gw2.assign(h * d, 0.f);
  }

  // Seconds for the six GEMMs of its forward+backward (outputs into separate buffers; the values do not
  // matter, the shapes and the work do).
  double time(bool bf16) {
    const Operand X{x.data(), x16.data()}, W1{w1.data(), w1_16.data()}, A{act.data(), act16.data()};
    const Operand W2{w2.data(), w2_16.data()}, DY{dy.data(), dy16.data()};
    const double t0 = moe::now_seconds();
    product(bf16, false, false, rows, in_cols, d, X, d, W1, in_cols, 0.f, out_pre.data(), in_cols);
    product(bf16, false, false, rows, d, h, A, in_cols, W2, d, 0.f, out_y.data(), d);
    // Backward: d_act = dy W2^T, dW2 += act^T dy, dx = d_pre W1^T, dW1 += x^T d_pre.
    product(bf16, false, true, rows, h, d, DY, d, W2, d, 0.f, out_pre.data(), in_cols);
    product(bf16, true, false, h, d, rows, A, in_cols, DY, d, 1.f, gw2.data(), d);
    product(bf16, false, true, rows, d, in_cols, A, in_cols, W1, in_cols, 0.f, out_y.data(), d);
    product(bf16, true, false, d, in_cols, rows, X, d, A, in_cols, 1.f, gw1.data(), in_cols);
    return moe::now_seconds() - t0;
  }
};

// The GEMM (bf16: on inputs rounded to bfloat16, whose products are exact in float32) against a naive
// double dot product on sampled entries.
bool plain_gemm_correct(bool bf16, int64_t M, int64_t N, int64_t K) {
  std::vector<float> A(M * K), B(K * N), C(M * N);
  std::vector<uint16_t> A16(M * K), B16(K * N);
  for (int64_t i = 0; i < M * K; ++i) A16[i] = moe::bf16_from_float(A[i] = moe::standard_normal(1, i));
  for (int64_t i = 0; i < K * N; ++i) B16[i] = moe::bf16_from_float(B[i] = moe::standard_normal(2, i));
  if (bf16) {
    for (int64_t i = 0; i < M * K; ++i) A[i] = moe::float_from_bf16(A16[i]);
    for (int64_t i = 0; i < K * N; ++i) B[i] = moe::float_from_bf16(B16[i]);
  }
  product(bf16, false, false, M, N, K, {A.data(), A16.data()}, K, {B.data(), B16.data()}, N, 0.f, C.data(), N);
  for (int s = 0; s < 64; ++s) {
    int64_t i = (s * 7919) % M, j = (s * 104729) % N;
    double ref = 0;
    for (int64_t q = 0; q < K; ++q) ref += static_cast<double>(A[i * K + q]) * B[q * N + j];
    // float32 accumulation over K terms of unit-variance products: error ~ sqrt(K) * 1e-7 * |terms|.
    if (std::fabs(ref - C[i * N + j]) > 1e-3 * std::sqrt(static_cast<double>(K))) return false;
  }
  return true;
}

// ||a - b|| / ||b||.
double relative_rms_error(const moe::Tensor& a, const moe::Tensor& b) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    diff += std::pow(static_cast<double>(a.f32()[i]) - b.f32()[i], 2);
    norm += std::pow(static_cast<double>(b.f32()[i]), 2);
  }
  return std::sqrt(diff / norm);
}

// A layer of `cfg` with the benchmark's router weights: larger than the training init, so routing is
// confident; on random tokens it is still balanced at the default shape (nothing dropped).
std::unique_ptr<moe::MoELayer> make_layer(const moe::MoEConfig& cfg) {
  auto layer = std::make_unique<moe::MoELayer>(cfg, 42);
  moe::fill_normal(layer->weights.w_gate, 0.5f, moe::stream_id(42, "bench.gate"));
  return layer;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const bench::LayerArgs a = parse(argc, argv);
    moe::set_num_threads(a.threads);
    const moe::MoEConfig cfg = bench::layer_config(a);
    const bool bf16 = cfg.precision == moe::Precision::BF16;
    std::unique_ptr<moe::MoELayer> layer = make_layer(cfg);
    // bf16: the float32 layer on the same weights and tokens, for the verification and the speed-up.
    moe::MoEConfig cfg32 = cfg;
    cfg32.precision = moe::Precision::FP32;
    std::unique_ptr<moe::MoELayer> layer32 = bf16 ? make_layer(cfg32) : nullptr;

    moe::Tensor x = moe::Tensor::empty({a.T, a.d});
    moe::Tensor y = moe::Tensor::empty({a.T, a.d}), y32 = moe::Tensor::empty({a.T, a.d});
    moe::Tensor dy = moe::Tensor::empty({a.T, a.d});
    moe::fill_normal(dy, 1.f, moe::stream_id(7, "bench.dy"));
    moe::Tensor dx = moe::Tensor::zeros({a.T, a.d}), dx32 = moe::Tensor::zeros({a.T, a.d});

    std::printf("bench-moe-layer: d=%lld h=%lld E=%lld k=%lld T=%lld capacity_factor=%.2f activation=%s "
                "precision=%s threads=%d provider=%s\n",
                (long long)a.d, (long long)a.h, (long long)a.E, (long long)a.k, (long long)a.T, a.cf,
                a.activation.c_str(), a.precision.c_str(), a.threads, moe::gemm_provider());

    const int64_t m = cfg.activation == moe::Activation::SwiGLU ? 3 : 2, in_cols = cfg.expert_in_cols();
    std::vector<moe::MoEPhaseTimes> fwd, bwd;
    std::vector<double> layer_t, layer32_t, plain_t, expert_rate;
    std::unique_ptr<PlainFfn> plain;
    int64_t kept_first = 0;
    for (int it = 0; it < a.warmup + a.repeats; ++it) {
      moe::fill_normal(x, 1.f, moe::stream_id(7, "bench.x." + std::to_string(it)));  // new routing
      double t0 = moe::now_seconds();
      layer->forward(y, x, /*training=*/true);
      layer->backward(dx, dy);
      const double t = moe::now_seconds() - t0;
      double t32 = 0;
      if (bf16) {
        t0 = moe::now_seconds();
        layer32->forward(y32, x, /*training=*/true);
        layer32->backward(dx32, dy);
        t32 = moe::now_seconds() - t0;
      }
      const moe::MoEStats& st = layer->stats();
      if (it == 0) {
        for (int64_t i = 0; i < y.numel(); ++i)
          MOE_ASSERT(std::isfinite(y.f32()[i]) && std::isfinite(dx.f32()[i]), "layer output is finite");
        if (bf16) {
          const double u = 1.0 / 256, ey = relative_rms_error(y, y32), edx = relative_rms_error(dx, dx32);
          std::printf("bf16 against the fp32 layer: relative RMS error y %.2f u, dx %.2f u (u = 2^-8)\n", ey / u,
                      edx / u);
          MOE_ASSERT(ey < 4 * u && edx < 4 * u, "the bf16 layer agrees with the fp32 layer within bf16 rounding");
        }
        kept_first = st.kept_total;
        std::printf("routing: capacity %lld, kept %lld of %lld choices (%.1f%% dropped)\n",
                    (long long)st.capacity, (long long)st.kept_total, (long long)(a.T * a.k),
                    100.0 * st.dropped_total / (a.T * a.k));
        const int64_t rows = kept_first / a.E;
        MOE_ASSERT(plain_gemm_correct(bf16, rows, a.h, a.d), "plain GEMM agrees with a naive dot product");
        plain = std::make_unique<PlainFfn>(rows, a.d, in_cols, a.h);
        if (bf16)
          std::printf("bf16 products: experts %s (row count left open), plain %s (exact shape)\n",
                      moe::gemm_bf16_implementation(false, false, rows, in_cols, a.d, a.d, in_cols, 0.f, in_cols,
                                                    moe::Bf16Rows::Varying).c_str(),
                      moe::gemm_bf16_implementation(false, false, rows, in_cols, a.d, a.d, in_cols, 0.f, in_cols)
                          .c_str());
      }
      double tp = 0;
      for (int64_t e = 0; e < a.E; ++e) tp += plain->time(bf16);
      if (it < a.warmup) continue;
      fwd.push_back(st.forward_time);
      bwd.push_back(st.backward_time);
      layer_t.push_back(t);
      layer32_t.push_back(t32);
      plain_t.push_back(tp);
      const double expert_flops = 3.0 * st.kept_total * 2.0 * a.d * a.h * m;
      expert_rate.push_back(expert_flops / (st.forward_time.experts + st.backward_time.experts) / 1e9);
    }

    auto med = [&](double moe::MoEPhaseTimes::*field, const std::vector<moe::MoEPhaseTimes>& v) {
      std::vector<double> xs;
      for (const auto& p : v) xs.push_back(p.*field);
      return median(xs);
    };
    struct Row { const char* name; double moe::MoEPhaseTimes::*field; };
    const Row rows[] = {{"router", &moe::MoEPhaseTimes::router}, {"plan/permute", &moe::MoEPhaseTimes::permute},
                        {"experts", &moe::MoEPhaseTimes::experts}, {"combine", &moe::MoEPhaseTimes::combine},
                        {"losses", &moe::MoEPhaseTimes::losses}};
    const double layer_time = median(layer_t);
    std::printf("\nphase (median of %d)   forward ms   backward ms   share of layer\n", a.repeats);
    double non_gemm = 0;
    for (const Row& r : rows) {
      double f = med(r.field, fwd), b = med(r.field, bwd);
      std::printf("%-22s %10.2f %13.2f %15.1f%%\n", r.name, 1e3 * f, 1e3 * b, 100.0 * (f + b) / layer_time);
      if (r.field != &moe::MoEPhaseTimes::experts) non_gemm += f + b;
    }
    std::printf("%-22s %24.2f ms\n", "layer fwd+bwd", 1e3 * layer_time);

    const int64_t plain_rows = plain->rows;
    const double plain_flops = 3.0 * plain_rows * a.E * 2.0 * a.d * a.h * m;
    const double rate = median(expert_rate), plain_rate = plain_flops / median(plain_t) / 1e9;
    std::printf("\nexpert GEMM rate:     %8.1f GFLOP/s  (%s; %lld kept pairs in the first call, new routing each call)\n",
                rate, a.precision.c_str(), (long long)kept_first);
    std::printf("plain GEMM rate:      %8.1f GFLOP/s  (same six GEMM shapes, %lld rows, x%lld)\n", plain_rate,
                (long long)plain_rows, (long long)a.E);
    std::printf("ratio expert/plain:   %8.3f          (target >= 0.85)\n", rate / plain_rate);
    std::printf("non-GEMM phases:      %8.1f%% of the layer (target < 10%%)\n", 100.0 * non_gemm / layer_time);
    if (bf16)
      std::printf("fp32 layer fwd+bwd:   %8.2f ms; bf16 speed-up %.2fx (target >= 1.8)\n", 1e3 * median(layer32_t),
                  median(layer32_t) / layer_time);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-moe-layer: %s\n", e.what());
    return 1;
  }
}
