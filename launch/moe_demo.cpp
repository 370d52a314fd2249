// moe-demo: trains a tiny MoE language model (embedding -> RMSNorm -> MoE + residual -> RMSNorm ->
// head) on the built-in synthetic corpus, on one process, and prints its loss falling and which
// experts each domain's tokens chose. A first look at the framework until moe-train lands.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/gemm.h"
#include "core/moe/moe_layer.h"
#include "core/ops.h"
#include "core/parameters.h"
#include "core/random.h"
#include "data/synthetic_corpus.h"
#include "optim/adamw.h"

namespace {

const char* kUsage = R"(usage: moe-demo [options]
Trains a small MoE language model on built-in synthetic data and prints the loss.
  --steps N            training steps (default 150, accepted: >= 1)
  --threads N          threads for GEMMs (default 1, accepted: >= 1)
  --seed N             random seed (default 1)
  --check-loss-falls   exit with status 1 unless the last 10 steps' mean loss is below
                       75% of the first step's loss
  --help               this text
)";

struct DemoOptions {
  int64_t steps = 150;
  int threads = 1;
  uint64_t seed = 1;
  bool check_loss_falls = false;
};

int64_t parse_int(const char* flag, const char* text, int64_t min_value) {
  char* end = nullptr;
  long long v = std::strtoll(text, &end, 10);
  MOE_REQUIRE(end != text && *end == '\0' && v >= min_value, flag, " '", text,
              "' is not an integer >= ", min_value);
  return v;
}

DemoOptions parse_options(int argc, char** argv) {
  DemoOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      MOE_REQUIRE(i + 1 < argc, a, " needs a value; see --help");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--steps") {
      o.steps = parse_int("--steps", value(), 1);
    } else if (a == "--threads") {
      o.threads = static_cast<int>(parse_int("--threads", value(), 1));
    } else if (a == "--seed") {
      o.seed = static_cast<uint64_t>(parse_int("--seed", value(), 0));
    } else if (a == "--check-loss-falls") {
      o.check_loss_falls = true;
    } else {
      throw moe::InvalidArgument("unknown argument '" + a +
                                 "'; accepted: --steps N, --threads N, --seed N, --check-loss-falls, --help");
    }
  }
  return o;
}

// The demo model's tensors and forward/backward, in one place.
struct DemoModel {
  int64_t vocab, d;
  moe::Tensor embedding, norm1_g, norm2_g, head;
  moe::Tensor d_embedding, d_norm1_g, d_norm2_g, d_head;
  moe::MoELayer moe_layer;

  // Activations saved by forward.
  moe::Tensor h0, a, rstd1, m, h1, b, rstd2, logits, probs;

  DemoModel(int64_t vocab_size, const moe::MoEConfig& cfg, uint64_t seed)
      : vocab(vocab_size), d(cfg.d_model), moe_layer(cfg, moe::stream_id(seed, "moe")) {
    embedding = moe::Tensor::empty({vocab, d});
    head = moe::Tensor::empty({d, vocab});
    moe::fill_normal(embedding, 1.0f, moe::stream_id(seed, "embedding"));
    moe::fill_normal(head, 0.02f, moe::stream_id(seed, "head"));
    norm1_g = moe::Tensor::empty({d});
    norm2_g = moe::Tensor::empty({d});
    norm1_g.fill(1.f);
    norm2_g.fill(1.f);
    d_embedding = moe::Tensor::zeros(embedding.shape());
    d_head = moe::Tensor::zeros(head.shape());
    d_norm1_g = moe::Tensor::zeros({d});
    d_norm2_g = moe::Tensor::zeros({d});
  }

  void register_parameters(moe::ParameterRegistry& r) {
    r.add("embedding", embedding, d_embedding, moe::ParamKind::Dense);
    r.add("norm1.g", norm1_g, d_norm1_g, moe::ParamKind::Dense, false);
    moe_layer.register_parameters(r, "moe");
    r.add("norm2.g", norm2_g, d_norm2_g, moe::ParamKind::Dense, false);
    r.add("head", head, d_head, moe::ParamKind::Dense);
  }

  // ids, targets (N) int32. Returns the cross-entropy; the MoE losses are in moe_layer.stats().
  float forward(const moe::Tensor& ids, const moe::Tensor& targets) {
    const int64_t N = ids.dim(0);
    h0 = moe::Tensor::empty({N, d});
    a = moe::Tensor::empty({N, d});
    rstd1 = moe::Tensor::empty({N});
    m = moe::Tensor::empty({N, d});
    b = moe::Tensor::empty({N, d});
    rstd2 = moe::Tensor::empty({N});
    logits = moe::Tensor::empty({N, vocab});
    probs = moe::Tensor::empty({N, vocab});
    moe::embedding_forward(h0, ids, embedding);
    moe::rmsnorm_forward(a, rstd1, h0, norm1_g, 1e-5f);
    moe_layer.forward(m, a, /*training=*/true);
    h1 = h0.clone();
    moe::add_scaled(h1, m, 1.f);  // residual
    moe::rmsnorm_forward(b, rstd2, h1, norm2_g, 1e-5f);
    moe::linear_forward(logits, b, head, nullptr);
    return moe::cross_entropy_forward(probs, logits, targets);
  }

  void backward(const moe::Tensor& ids, const moe::Tensor& targets) {
    const int64_t N = ids.dim(0);
    moe::Tensor dlogits = moe::Tensor::zeros({N, vocab});
    moe::cross_entropy_backward(dlogits, probs, targets, 1.f);
    moe::Tensor db = moe::Tensor::zeros({N, d});
    moe::linear_backward(&db, &d_head, nullptr, dlogits, b, head);
    moe::Tensor dh1 = moe::Tensor::zeros({N, d});
    moe::rmsnorm_backward(&dh1, &d_norm2_g, db, h1, norm2_g, rstd2);
    moe::Tensor dh0 = dh1.clone();  // the residual carries dh1 straight through
    moe::Tensor da = moe::Tensor::zeros({N, d});
    moe_layer.backward(da, dh1);
    moe::rmsnorm_backward(&dh0, &d_norm1_g, da, h0, norm1_g, rstd1);
    moe::embedding_backward(d_embedding, dh0, ids);
  }
};

int run(const DemoOptions& opt) {
  moe::set_num_threads(opt.threads);
  moe::SyntheticCorpusConfig corpus_cfg;
  corpus_cfg.seed = opt.seed;
  moe::SyntheticCorpus corpus(corpus_cfg);

  moe::MoEConfig cfg;
  cfg.d_model = 64;
  cfg.hidden = 128;
  cfg.num_experts = 4;
  cfg.top_k = 2;
  cfg.activation = moe::Activation::SwiGLU;
  cfg.capacity_factor_train = 1.25;
  cfg.jitter_eps = 0.01f;
  DemoModel model(corpus_cfg.vocab_size, cfg, opt.seed);
  moe::ParameterRegistry registry;
  model.register_parameters(registry);
  moe::AdamWConfig adam_cfg;
  adam_cfg.weight_decay = 0.01f;
  moe::AdamW optimizer(registry, adam_cfg);

  const int64_t batch = 16, seq = 33;  // 33 tokens give 32 next-token predictions
  const int64_t N = batch * (seq - 1);
  std::printf("moe-demo: %lld steps, %lld sequences x %lld tokens, %lld experts (top-%lld, %s), "
              "%lld parameters, GEMM: %s, %d thread(s)\n",
              (long long)opt.steps, (long long)batch, (long long)(seq - 1), (long long)cfg.num_experts,
              (long long)cfg.top_k, moe::to_string(cfg.activation), (long long)registry.numel(),
              moe::gemm_provider(), opt.threads);
  std::printf("uniform guess loss: %.3f, best achievable: %.3f (nats)\n",
              std::log(static_cast<double>(corpus_cfg.vocab_size)), corpus.entropy_rate());

  // expert_share[domain][expert]: kept choices, summed over training.
  std::vector<std::vector<int64_t>> expert_share(corpus_cfg.num_domains,
                                                 std::vector<int64_t>(cfg.num_experts, 0));
  std::vector<int32_t> seq_tokens(seq), ids_v(N), tgt_v(N);
  std::vector<double> losses;
  for (int64_t step = 0; step < opt.steps; ++step) {
    for (int64_t s = 0; s < batch; ++s) {
      corpus.sequence(step * batch + s, seq, seq_tokens.data());
      for (int64_t i = 0; i + 1 < seq; ++i) {
        ids_v[s * (seq - 1) + i] = seq_tokens[i];
        tgt_v[s * (seq - 1) + i] = seq_tokens[i + 1];
      }
    }
    moe::Tensor ids = moe::Tensor::from_ints({N}, ids_v);
    moe::Tensor targets = moe::Tensor::from_ints({N}, tgt_v);
    registry.zero_grads();
    float ce = model.forward(ids, targets);
    model.backward(ids, targets);
    const float lr = 3e-3f * std::min(1.0f, static_cast<float>(step + 1) / 10.f);  // short warm-up
    optimizer.step(lr);
    losses.push_back(ce);

    const moe::MoEStats& st = model.moe_layer.stats();
    const int32_t* slot = model.moe_layer.plan().slot.i32();
    const int32_t* expert = model.moe_layer.router_output().expert.i32();
    for (int64_t t = 0; t < N; ++t)
      for (int64_t j = 0; j < cfg.top_k; ++j)
        if (slot[t * cfg.top_k + j] >= 0)
          ++expert_share[corpus.domain_of(step * batch + t / (seq - 1))][expert[t * cfg.top_k + j]];
    if (step % 10 == 0 || step + 1 == opt.steps)
      std::printf("step %4lld  loss %.4f  aux %.4f  z %.5f  dropped %5.1f%%\n", (long long)step, ce,
                  st.aux_loss, st.z_loss, 100.0 * st.dropped_total / (N * cfg.top_k));
  }

  std::printf("\nshare of each domain's kept tokens per expert:\n        ");
  for (int64_t e = 0; e < cfg.num_experts; ++e) std::printf("  exp%-3lld", (long long)e);
  for (int64_t dom = 0; dom < corpus_cfg.num_domains; ++dom) {
    int64_t total = 0;
    for (int64_t c : expert_share[dom]) total += c;
    std::printf("\ndomain %lld", (long long)dom);
    for (int64_t c : expert_share[dom]) std::printf("  %5.1f%%", total ? 100.0 * c / total : 0.0);
  }
  std::printf("\n");

  const size_t tail = std::min<size_t>(10, losses.size());
  double last = 0;
  for (size_t i = losses.size() - tail; i < losses.size(); ++i) last += losses[i] / tail;
  std::printf("first loss %.4f, mean of last %zu: %.4f\n", losses.front(), tail, last);
  if (opt.check_loss_falls && !(last < 0.75 * losses.front())) {
    std::fprintf(stderr, "moe-demo: the loss did not fall below 75%% of the first step's\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const moe::InvalidArgument& e) {
    std::fprintf(stderr, "moe-demo: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-demo: error: %s\n", e.what());
    return 1;
  }
}
