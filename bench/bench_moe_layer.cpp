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
#include "core/ops.h"
#include "core/random.h"
#include "core/timer.h"

#include "bench_util.h"

namespace {

using bench::median;

struct Args : bench::LayerArgs {
  std::string device = "cpu";  // cpu | cuda: the layer and the plain GEMMs on GPU 0
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    MOE_REQUIRE(s == "--help" || i + 1 < argc, s, " needs a value; see --help");
    if (s == "--help") {
      std::printf("usage: bench-moe-layer [--d 512] [--h 2048] [--experts 8] [--topk 2] [--tokens 4096]\n"
                  "         [--capacity-factor 1.25] [--activation gelu|relu|swiglu] [--precision fp32|bf16]\n"
                  "         [--device cpu|cuda] [--threads 1] [--warmup 2] [--repeats 7]\n");
      std::exit(0);
    }
    const char* v = argv[++i];
    if (s == "--device") {
      a.device = v;
      MOE_REQUIRE(a.device == "cpu" || a.device == "cuda", "--device ", a.device, ": expected cpu or cuda");
    } else if (!bench::parse_layer_arg(s, v, a)) throw moe::InvalidArgument("unknown argument '" + s + "'; see --help");
  }
  return a;
}

// Waits for the device, so that a clock read afterwards covers the work queued before it.
double synced_now(moe::Device device) {
  if (device == moe::Device::CUDA) moe::cuda::synchronize();
  return moe::now_seconds();
}

// A host tensor of N(0, std) values from `stream`, moved to `device`; bf16: rounded to bfloat16 there.
moe::Tensor random_on(moe::Device device, const moe::Shape& shape, float std, uint64_t stream, bool bf16 = false) {
  moe::Tensor t = moe::random_normal(shape, std, stream, device);
  if (!bf16) return t;
  moe::Tensor r = moe::Tensor::empty(shape, moe::DType::BF16, device);
  moe::convert(r, t);
  return r;
}

// A plain dense FFN of `rows` rows on the device, through the same linear ops the layers use: its six
// GEMMs (x W1, act W2, and the backward's dact, dW2, dx, dW1) on operands of the run's dtype.
struct PlainFfn {
  int64_t rows;
  moe::Tensor x, w1, act, w2, dy, dpre, pre, y, dact, dx, gw1, gw2;

  PlainFfn(moe::Device dev, bool bf16, int64_t rows_, int64_t d, int64_t in_cols, int64_t h) : rows(rows_) {
    x = random_on(dev, {rows, d}, 1.f, 11, bf16), w1 = random_on(dev, {d, in_cols}, 0.02f, 12, bf16);
    act = random_on(dev, {rows, h}, 1.f, 13, bf16), w2 = random_on(dev, {h, d}, 0.02f, 14, bf16);
    dy = random_on(dev, {rows, d}, 1.f, 15, bf16), dpre = random_on(dev, {rows, in_cols}, 1.f, 16, bf16);
    pre = moe::Tensor::empty({rows, in_cols}, moe::DType::F32, dev), y = moe::Tensor::empty({rows, d}, moe::DType::F32, dev);
    dact = moe::Tensor::zeros({rows, h}, moe::DType::F32, dev), dx = moe::Tensor::zeros({rows, d}, moe::DType::F32, dev);
    gw1 = moe::Tensor::zeros({d, in_cols}, moe::DType::F32, dev), gw2 = moe::Tensor::zeros({h, d}, moe::DType::F32, dev);
  }

  // Seconds for the six GEMMs (the values do not matter, the shapes and the work do).
  double time(moe::Device dev) {
    const double t0 = synced_now(dev);
    moe::linear_forward(pre, x, w1, nullptr);
    moe::linear_forward(y, act, w2, nullptr);
    moe::linear_backward(&dact, &gw2, nullptr, dy, act, w2);
    moe::linear_backward(&dx, &gw1, nullptr, dpre, x, w1);
    return synced_now(dev) - t0;
  }
};

// The device's product (bf16: on inputs rounded to bfloat16, whose products are exact in float32)
// against a naive double dot product on sampled entries.
bool plain_gemm_correct(moe::Device dev, bool bf16, int64_t M, int64_t N, int64_t K) {
  const moe::Tensor A = random_on(dev, {M, K}, 1.f, 1, bf16), B = random_on(dev, {K, N}, 1.f, 2, bf16);
  moe::Tensor C = moe::Tensor::empty({M, N}, moe::DType::F32, dev);
  moe::linear_forward(C, A, B, nullptr);
  moe::Tensor a = A, b = B;
  if (bf16) {
    a = moe::Tensor::empty({M, K}, moe::DType::F32, dev), b = moe::Tensor::empty({K, N}, moe::DType::F32, dev);
    moe::convert(a, A), moe::convert(b, B);
  }
  const moe::Tensor ha = a.to(moe::Device::CPU), hb = b.to(moe::Device::CPU), hc = C.to(moe::Device::CPU);
  for (int s = 0; s < 64; ++s) {
    int64_t i = (s * 7919) % M, j = (s * 104729) % N;
    double ref = 0;
    for (int64_t q = 0; q < K; ++q) ref += static_cast<double>(ha.f32()[i * K + q]) * hb.f32()[q * N + j];
    // float32 accumulation over K terms of unit-variance products: error ~ sqrt(K) * 1e-7 * |terms|.
    if (std::fabs(ref - hc.f32()[i * N + j]) > 1e-3 * std::sqrt(static_cast<double>(K))) return false;
  }
  return true;
}

// ||a - b|| / ||b||.
double relative_rms_error(const moe::Tensor& a, const moe::Tensor& b) {
  const moe::Tensor ha = a.to(moe::Device::CPU), hb = b.to(moe::Device::CPU);
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < hb.numel(); ++i) {
    diff += std::pow(static_cast<double>(ha.f32()[i]) - hb.f32()[i], 2);
    norm += std::pow(static_cast<double>(hb.f32()[i]), 2);
  }
  return std::sqrt(diff / norm);
}

// A layer of `cfg` on `device` with the benchmark's router weights: larger than the training init, so
// routing is confident; on random tokens it is still balanced at the default shape (nothing dropped).
std::unique_ptr<moe::MoELayer> make_layer(const moe::MoEConfig& cfg, moe::Device device) {
  auto layer = std::make_unique<moe::MoELayer>(cfg, 42, nullptr, device);
  layer->weights.w_gate.copy_from(moe::random_normal(layer->weights.w_gate.shape(), 0.5f,
                                                      moe::stream_id(42, "bench.gate"), moe::Device::CPU));
  return layer;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    moe::set_num_threads(a.threads);
    const moe::MoEConfig cfg = bench::layer_config(a);
    const bool bf16 = cfg.precision == moe::Precision::BF16;
    const moe::Device dev = a.device == "cuda" ? moe::Device::CUDA : moe::Device::CPU;
    if (dev == moe::Device::CUDA) moe::cuda::use_device(0);
    std::unique_ptr<moe::MoELayer> layer = make_layer(cfg, dev);
    // bf16: the float32 layer on the same weights and tokens, for the verification and the speed-up.
    moe::MoEConfig cfg32 = cfg;
    cfg32.precision = moe::Precision::FP32;
    std::unique_ptr<moe::MoELayer> layer32 = bf16 ? make_layer(cfg32, dev) : nullptr;

    const moe::Shape td = {a.T, a.d};
    moe::Tensor x = moe::Tensor::empty(td, moe::DType::F32, dev);
    moe::Tensor y = moe::Tensor::empty(td, moe::DType::F32, dev), y32 = moe::Tensor::empty(td, moe::DType::F32, dev);
    const moe::Tensor dy = moe::random_normal(td, 1.f, moe::stream_id(7, "bench.dy"), dev);
    moe::Tensor dx = moe::Tensor::zeros(td, moe::DType::F32, dev), dx32 = moe::Tensor::zeros(td, moe::DType::F32, dev);

    std::printf("bench-moe-layer: d=%lld h=%lld E=%lld k=%lld T=%lld capacity_factor=%.2f activation=%s "
                "precision=%s device=%s threads=%d provider=%s\n",
                (long long)a.d, (long long)a.h, (long long)a.E, (long long)a.k, (long long)a.T, a.cf,
                a.activation.c_str(), a.precision.c_str(), a.device.c_str(), a.threads,
                dev == moe::Device::CPU ? moe::gemm_provider() : "cuBLAS");

    const int64_t m = cfg.activation == moe::Activation::SwiGLU ? 3 : 2, in_cols = cfg.expert_in_cols();
    std::vector<moe::MoEPhaseTimes> fwd, bwd;
    std::vector<double> layer_t, layer32_t, plain_t, expert_rate;
    std::unique_ptr<PlainFfn> plain;
    int64_t kept_first = 0;
    for (int it = 0; it < a.warmup + a.repeats; ++it) {
      x.copy_from(moe::random_normal(td, 1.f, moe::stream_id(7, "bench.x." + std::to_string(it)), moe::Device::CPU));
      double t0 = synced_now(dev);  // new routing
      layer->forward(y, x, /*training=*/true);
      layer->backward(dx, dy);
      const double t = synced_now(dev) - t0;
      double t32 = 0;
      if (bf16) {
        t0 = synced_now(dev);
        layer32->forward(y32, x, /*training=*/true);
        layer32->backward(dx32, dy);
        t32 = synced_now(dev) - t0;
      }
      const moe::MoEStats& st = layer->stats();
      if (it == 0) {
        const moe::Tensor hy = y.to(moe::Device::CPU), hdx = dx.to(moe::Device::CPU);
        for (int64_t i = 0; i < hy.numel(); ++i)
          MOE_ASSERT(std::isfinite(hy.f32()[i]) && std::isfinite(hdx.f32()[i]), "layer output is finite");
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
        MOE_ASSERT(plain_gemm_correct(dev, bf16, rows, a.h, a.d), "plain GEMM agrees with a naive dot product");
        plain = std::make_unique<PlainFfn>(dev, bf16, rows, a.d, in_cols, a.h);
        if (bf16 && dev == moe::Device::CPU)
          std::printf("bf16 products: experts %s (row count left open), plain %s (exact shape)\n",
                      moe::gemm_bf16_implementation(false, false, rows, in_cols, a.d, a.d, in_cols, 0.f, in_cols,
                                                    moe::Bf16Rows::Varying).c_str(),
                      moe::gemm_bf16_implementation(false, false, rows, in_cols, a.d, a.d, in_cols, 0.f, in_cols)
                          .c_str());
      }
      double tp = 0;
      for (int64_t e = 0; e < a.E; ++e) tp += plain->time(dev);
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
