// Benchmark of one MoE layer's forward+backward on one process: time per phase, the expert GEMM
// rate against a plain GEMM of the same shapes timed in the same run, and their ratio.
//
// Figures (GUIDE section 4):
//   expert FLOPs per call = 3 * kept_pairs * 2 * d * h * m   (forward 1x, backward 2x; m = 2 matrices
//                           for ReLU/GELU, 3 for SwiGLU, whose first matrix has 2h columns)
//   expert GFLOP/s        = expert FLOPs / (forward + backward time of the experts phase)
//   plain GEMM GFLOP/s    = the same six GEMMs (x W_in, a W_out and their four backward GEMMs) on one
//                           dense block of kept_pairs / E rows, i.e. one average expert, repeated E times
//   non-GEMM share        = (router + permute + combine + losses) / layer time, forward + backward
// Results are verified before timing: the layer's output must be finite and the plain GEMM is checked
// against a naive dot product on sampled entries.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

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
                  "         [--capacity-factor 1.25] [--activation gelu|relu|swiglu] [--threads 1]\n"
                  "         [--warmup 2] [--repeats 7]\n");
      std::exit(0);
    }
    const char* v = argv[++i];
    if (!bench::parse_layer_arg(s, v, a)) throw moe::InvalidArgument("unknown argument '" + s + "'; see --help");
  }
  return a;
}

// Seconds for the six GEMMs of a dense FFN forward+backward on `rows` rows.
double time_plain_ffn_gemms(int64_t rows, int64_t d, int64_t in_cols, int64_t h, std::vector<float>& x,
                            std::vector<float>& w1, std::vector<float>& w2, std::vector<float>& pre,
                            std::vector<float>& y, std::vector<float>& gw1, std::vector<float>& gw2) {
  double t0 = moe::now_seconds();
  moe::gemm(false, false, rows, in_cols, d, 1.f, x.data(), d, w1.data(), in_cols, 0.f, pre.data(), in_cols);
  moe::gemm(false, false, rows, d, h, 1.f, pre.data(), in_cols, w2.data(), d, 0.f, y.data(), d);
  // Backward: d_act = dy W2^T, dW2 += act^T dy, dx = d_pre W1^T, dW1 += x^T d_pre (y, pre reused as
  // stand-ins for the gradients: the shapes and the work are what matter here).
  moe::gemm(false, true, rows, h, d, 1.f, y.data(), d, w2.data(), d, 0.f, pre.data(), in_cols);
  moe::gemm(true, false, h, d, rows, 1.f, pre.data(), in_cols, y.data(), d, 1.f, gw2.data(), d);
  moe::gemm(false, true, rows, d, in_cols, 1.f, pre.data(), in_cols, w1.data(), in_cols, 0.f, x.data(), d);
  moe::gemm(true, false, d, in_cols, rows, 1.f, x.data(), d, pre.data(), in_cols, 1.f, gw1.data(), in_cols);
  return moe::now_seconds() - t0;
}

bool plain_gemm_correct(int64_t M, int64_t N, int64_t K) {
  std::vector<float> A(M * K), B(K * N), C(M * N);
  for (int64_t i = 0; i < M * K; ++i) A[i] = moe::standard_normal(1, i);
  for (int64_t i = 0; i < K * N; ++i) B[i] = moe::standard_normal(2, i);
  moe::gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
  for (int s = 0; s < 64; ++s) {
    int64_t i = (s * 7919) % M, j = (s * 104729) % N;
    double ref = 0;
    for (int64_t q = 0; q < K; ++q) ref += static_cast<double>(A[i * K + q]) * B[q * N + j];
    // float32 accumulation over K terms of unit-variance products: error ~ sqrt(K) * 1e-7 * |terms|.
    if (std::fabs(ref - C[i * N + j]) > 1e-3 * std::sqrt(static_cast<double>(K))) return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const bench::LayerArgs a = parse(argc, argv);
    moe::set_num_threads(a.threads);
    const moe::MoEConfig cfg = bench::layer_config(a);
    moe::MoELayer layer(cfg, 42);
    // Larger router weights than the training init give confident routing. On random tokens it is
    // still balanced at this shape (nothing is dropped); the drop path is exercised by the tests.
    moe::fill_normal(layer.weights.w_gate, 0.5f, moe::stream_id(42, "bench.gate"));

    moe::Tensor x = moe::Tensor::empty({a.T, a.d});
    moe::fill_normal(x, 1.f, moe::stream_id(7, "bench.x"));
    moe::Tensor y = moe::Tensor::empty({a.T, a.d});
    moe::Tensor dy = moe::Tensor::empty({a.T, a.d});
    moe::fill_normal(dy, 1.f, moe::stream_id(7, "bench.dy"));
    moe::Tensor dx = moe::Tensor::zeros({a.T, a.d});

    std::printf("bench-moe-layer: d=%lld h=%lld E=%lld k=%lld T=%lld capacity_factor=%.2f activation=%s "
                "threads=%d provider=%s\n",
                (long long)a.d, (long long)a.h, (long long)a.E, (long long)a.k, (long long)a.T, a.cf,
                a.activation.c_str(), a.threads, moe::gemm_provider());

    const int64_t m = cfg.activation == moe::Activation::SwiGLU ? 3 : 2;
    std::vector<moe::MoEPhaseTimes> fwd, bwd;
    std::vector<double> layer_t, plain_t;
    int64_t kept = 0;
    std::vector<float> px, pw1, pw2, ppre, py, pgw1, pgw2;
    for (int it = 0; it < a.warmup + a.repeats; ++it) {
      double t0 = moe::now_seconds();
      layer.forward(y, x, /*training=*/true);
      layer.backward(dx, dy);
      double t = moe::now_seconds() - t0;
      const moe::MoEStats& st = layer.stats();
      if (it == 0) {
        for (int64_t i = 0; i < y.numel(); ++i)
          MOE_ASSERT(std::isfinite(y.f32()[i]) && std::isfinite(dx.f32()[i]), "layer output is finite");
        kept = st.kept_total;
        std::printf("routing: capacity %lld, kept %lld of %lld choices (%.1f%% dropped)\n",
                    (long long)st.capacity, (long long)st.kept_total, (long long)(a.T * a.k),
                    100.0 * st.dropped_total / (a.T * a.k));
        MOE_ASSERT(plain_gemm_correct(kept / a.E, a.h, a.d), "plain GEMM agrees with a naive dot product");
        const int64_t rows = kept / a.E, in_cols = cfg.expert_in_cols();
        px.assign(rows * a.d, 0.01f); pw1.assign(a.d * in_cols, 0.01f); pw2.assign(a.h * a.d, 0.01f);
        ppre.assign(rows * in_cols, 0.f); py.assign(rows * a.d, 0.f);
        pgw1.assign(a.d * in_cols, 0.f); pgw2.assign(a.h * a.d, 0.f);
      }
      MOE_ASSERT(st.kept_total == kept, "same input, same routing every repeat");
      double tp = 0;
      for (int64_t e = 0; e < a.E; ++e)
        tp += time_plain_ffn_gemms(kept / a.E, a.d, cfg.expert_in_cols(), a.h, px, pw1, pw2, ppre, py, pgw1, pgw2);
      if (it < a.warmup) continue;
      fwd.push_back(st.forward_time);
      bwd.push_back(st.backward_time);
      layer_t.push_back(t);
      plain_t.push_back(tp);
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
    double non_gemm = 0, experts = 0;
    for (const Row& r : rows) {
      double f = med(r.field, fwd), b = med(r.field, bwd);
      std::printf("%-22s %10.2f %13.2f %15.1f%%\n", r.name, 1e3 * f, 1e3 * b, 100.0 * (f + b) / layer_time);
      if (r.field == &moe::MoEPhaseTimes::experts) experts = f + b;
      else non_gemm += f + b;
    }
    std::printf("%-22s %24.2f ms\n", "layer fwd+bwd", 1e3 * layer_time);

    const double expert_flops = 3.0 * kept * 2.0 * a.d * a.h * m;
    const double plain_flops = 3.0 * (kept / a.E) * a.E * 2.0 * a.d * a.h * m;
    const double expert_rate = expert_flops / experts / 1e9;
    const double plain_rate = plain_flops / median(plain_t) / 1e9;
    std::printf("\nexpert GEMM rate:     %8.1f GFLOP/s  (%.3g GFLOP over %lld kept pairs)\n", expert_rate,
                expert_flops / 1e9, (long long)kept);
    std::printf("plain GEMM rate:      %8.1f GFLOP/s  (same six GEMM shapes, %lld rows, x%lld)\n", plain_rate,
                (long long)(kept / a.E), (long long)a.E);
    std::printf("ratio expert/plain:   %8.3f          (target >= 0.85)\n", expert_rate / plain_rate);
    std::printf("non-GEMM phases:      %8.1f%% of the layer (target < 10%%)\n", 100.0 * non_gemm / layer_time);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-moe-layer: %s\n", e.what());
    return 1;
  }
}
