// Benchmark of the CPU GEMM provider in float32 (moe::gemm: dnnl_sgemm) against bfloat16 inputs with
// float32 output (moe::gemm_bf16: oneDNN's matmul primitive) on the six expert GEMMs of one MoE layer's
// forward+backward (bench-moe-layer's shapes: one expert of capacity C rows), at 1..--threads threads.
//
// Figures:
//   GEMM FLOPs        = 2 M N K
//   GFLOP/s           = FLOPs / median time of --repeats calls after --warmup calls
//   total             = the six GEMMs' FLOPs / the sum of their median times
//   ratio             = bf16 GFLOP/s / fp32 GFLOP/s, measured side by side in the same run
// Results are verified before timing, at each thread count: the fp32 product against a double dot
// product on sampled entries, and the bf16 product against the fp32 product of the same bf16-rounded
// inputs on every entry (the bf16 products are exact in float32, so both are float32 sums:
// |difference| <= 2 (K + 2) u sum_k |a_ik b_kj| + beta terms, u = 2^-24; inputs in [-1, 1]).
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/bfloat16.h"
#include "core/check.h"
#include "core/cpu/gemm.h"
#include "core/moe/moe_config.h"
#include "core/timer.h"

#include "bench_util.h"

namespace {

bench::LayerArgs parse(int argc, char** argv) {
  bench::LayerArgs a;
  a.threads = 2;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    MOE_REQUIRE(s == "--help" || i + 1 < argc, s, " needs a value; see --help");
    if (s == "--help") {
      std::printf("usage: bench-gemm [--d 512] [--h 2048] [--experts 8] [--topk 2] [--tokens 4096]\n"
                  "         [--capacity-factor 1.25] [--activation gelu|relu|swiglu] [--threads 2 (times 1..n)]\n"
                  "         [--warmup 2] [--repeats 7]\n");
      std::exit(0);
    }
    const char* v = argv[++i];
    if (!bench::parse_layer_arg(s, v, a)) throw moe::InvalidArgument("unknown argument '" + s + "'; see --help");
  }
  return a;
}

struct Shape {
  const char* name;
  bool trans_a, trans_b;
  int64_t M, N, K;
  float beta;
};

// One GEMM's operands (row-major, unpadded), in float32 and bfloat16 holding the same (rounded) values.
struct Operands {
  std::vector<float> a, b, c_start;
  std::vector<uint16_t> a16, b16;
};

Operands make_operands(const Shape& s, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  Operands o;
  auto fill = [&](std::vector<float>& v, std::vector<uint16_t>* v16, int64_t n) {
    v.resize(n);
    if (v16 != nullptr) v16->resize(n);
    for (int64_t i = 0; i < n; ++i) {
      v[i] = dist(rng);
      if (v16 == nullptr) continue;
      (*v16)[i] = moe::bf16_from_float(v[i]);
      v[i] = moe::float_from_bf16((*v16)[i]);
    }
  };
  fill(o.a, &o.a16, s.M * s.K);
  fill(o.b, &o.b16, s.K * s.N);
  fill(o.c_start, nullptr, s.M * s.N);
  return o;
}

// Leading dimensions of the unpadded operands: A stored (M, K) or (K, M), B (K, N) or (N, K).
int64_t lda(const Shape& s) { return s.trans_a ? s.M : s.K; }
int64_t ldb(const Shape& s) { return s.trans_b ? s.K : s.N; }

void run_fp32(const Shape& s, const Operands& o, std::vector<float>& c) {
  moe::gemm(s.trans_a, s.trans_b, s.M, s.N, s.K, 1.f, o.a.data(), lda(s), o.b.data(), ldb(s), s.beta, c.data(), s.N);
}
void run_bf16(const Shape& s, const Operands& o, std::vector<float>& c) {
  moe::gemm_bf16(s.trans_a, s.trans_b, s.M, s.N, s.K, o.a16.data(), lda(s), o.b16.data(), ldb(s), s.beta, c.data(),
                 s.N);
}

void verify(const Shape& s, const Operands& o, std::mt19937& rng) {
  std::vector<float> c32 = o.c_start, c16 = o.c_start;
  run_fp32(s, o, c32);
  run_bf16(s, o, c16);
  auto a = [&](int64_t i, int64_t k) { return s.trans_a ? o.a[k * s.M + i] : o.a[i * s.K + k]; };
  auto b = [&](int64_t k, int64_t j) { return s.trans_b ? o.b[j * s.K + k] : o.b[k * s.N + j]; };
  const double u = FLT_EPSILON / 2;
  // The fp32 product on sampled entries against a double dot product (core/cpu/gemm.h's bound).
  std::uniform_int_distribution<int64_t> row(0, s.M - 1), col(0, s.N - 1);
  for (int sample = 0; sample < 64; ++sample) {
    const int64_t i = row(rng), j = col(rng);
    double dot = s.beta * o.c_start[i * s.N + j], dot_abs = std::fabs(dot);
    for (int64_t k = 0; k < s.K; ++k) {
      dot += double(a(i, k)) * b(k, j);
      dot_abs += std::fabs(double(a(i, k)) * b(k, j));
    }
    MOE_ASSERT(std::fabs(c32[i * s.N + j] - dot) <= 2 * (s.K + 2) * u * dot_abs,
               std::string(s.name) + ": the fp32 GEMM agrees with a double dot product");
  }
  // Every bf16 entry against fp32, with sum |a b| <= K and |beta c| <= 1 for inputs in [-1, 1].
  const double bound = 2 * 2 * (s.K + 2) * u * (s.K + 1);
  for (int64_t i = 0; i < s.M * s.N; ++i)
    MOE_ASSERT(std::fabs(c16[i] - c32[i]) <= bound,
               std::string(s.name) + ": the bf16 GEMM agrees with the fp32 GEMM on the same rounded inputs");
}

// Median seconds of one call of `run`.
template <class Run>
double time_median(const bench::LayerArgs& a, Run run) {
  std::vector<double> t;
  for (int it = 0; it < a.warmup + a.repeats; ++it) {
    const double t0 = moe::now_seconds();
    run();
    if (it >= a.warmup) t.push_back(moe::now_seconds() - t0);
  }
  return bench::median(t);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const bench::LayerArgs a = parse(argc, argv);
    const moe::MoEConfig cfg = bench::layer_config(a);
    const int64_t capacity = moe::expert_capacity(a.cf, a.T, a.k, a.E, cfg.min_capacity);
    const int64_t R = capacity > 0 ? capacity : a.T * a.k / a.E, d = a.d, h = a.h, in_cols = cfg.expert_in_cols();
    MOE_REQUIRE(R >= 1, "--tokens ", a.T, " x --topk ", a.k, " gives no rows per expert for --experts ", a.E);
    moe::flush_denormals_to_zero();
    std::printf("bench-gemm: expert GEMMs of d=%lld h=%lld E=%lld k=%lld T=%lld capacity_factor=%.2f "
                "activation=%s: %lld rows per expert; provider=%s\n",
                (long long)d, (long long)h, (long long)a.E, (long long)a.k, (long long)a.T, a.cf,
                a.activation.c_str(), (long long)R, moe::gemm_provider());
    // bench-moe-layer's six: the forward's x W_in and act W_out, the backward's d_act = dy W_out^T,
    // dW_out += act^T dy, dx = d_pre W_in^T, dW_in += x^T d_pre.
    const std::vector<Shape> shapes = {
        {"x W_in", false, false, R, in_cols, d, 0.f},     {"act W_out", false, false, R, d, h, 0.f},
        {"dy W_out^T", false, true, R, h, d, 0.f},        {"dW_out += act^T dy", true, false, h, d, R, 1.f},
        {"d_pre W_in^T", false, true, R, d, in_cols, 0.f}, {"dW_in += x^T d_pre", true, false, d, in_cols, R, 1.f},
    };
    std::mt19937 rng(1);
    std::vector<Operands> operands;
    for (const Shape& s : shapes) operands.push_back(make_operands(s, rng));

    for (int threads = 1; threads <= a.threads; ++threads) {
      moe::set_num_threads(threads);
      std::printf("\nthreads=%d (median of %d)  %5s %5s %5s   fp32 GFLOP/s   bf16 GFLOP/s   bf16/fp32\n", threads,
                  a.repeats, "M", "N", "K");
      double flops = 0, t32 = 0, t16 = 0;
      for (size_t i = 0; i < shapes.size(); ++i) {
        const Shape& s = shapes[i];
        verify(s, operands[i], rng);
        std::vector<float> c = operands[i].c_start;
        const double f = 2.0 * s.M * s.N * s.K;
        const double s32 = time_median(a, [&] { run_fp32(s, operands[i], c); });
        const double s16 = time_median(a, [&] { run_bf16(s, operands[i], c); });
        std::printf("%-24s %5lld %5lld %5lld %14.1f %14.1f %11.2f\n", s.name, (long long)s.M, (long long)s.N,
                    (long long)s.K, f / s32 * 1e-9, f / s16 * 1e-9, s32 / s16);
        flops += f, t32 += s32, t16 += s16;
      }
      std::printf("%-24s %17s %14.1f %14.1f %11.2f\n", "total (six GEMMs)", "", flops / t32 * 1e-9,
                  flops / t16 * 1e-9, t32 / t16);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-gemm: %s\n", e.what());
    return 1;
  }
}
