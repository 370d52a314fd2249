// The built-in synthetic corpus (data/synthetic_corpus.h).
#include "data/synthetic_corpus.h"

#include <cmath>

#include "core/check.h"
#include "core/random.h"

namespace moe {

SyntheticCorpus::SyntheticCorpus(const DataConfig& cfg, int64_t vocab_size, uint64_t seed)
    : vocab_size_(vocab_size), num_domains_(cfg.synthetic_domains), branching_(cfg.synthetic_branching), seed_(seed) {
  cfg.validate_synthetic(vocab_size);
  const int64_t V = vocab_size_, B = branching_, band = V / num_domains_;
  // Geometric-like weights 0.6, 0.25, 0.15 for three successors; longer lists decay by halves.
  double total = 0;
  for (int64_t j = 0; j < B; ++j) {
    double w = j == 0 ? 0.6 : j == 1 ? 0.25 : 0.15 / std::pow(2.0, static_cast<double>(j - 2));
    successor_prob_.push_back(w);
    total += w;
  }
  for (double& p : successor_prob_) p /= total;

  const uint64_t stream = stream_id(seed_, "synthetic.successors");
  successor_.resize(V * B);
  for (int64_t a = 0; a < V; ++a) {
    // Tokens beyond the last full band belong to the last domain.
    const int64_t domain = std::min(a / band, num_domains_ - 1);
    const int64_t lo = domain * band;
    // Distinct successors inside the band: a partial Fisher-Yates shuffle of the band.
    std::vector<int32_t> pool(band);
    for (int64_t i = 0; i < band; ++i) pool[i] = static_cast<int32_t>(lo + i);
    for (int64_t j = 0; j < B; ++j) {
      int64_t pick = j + static_cast<int64_t>(uniform01(stream, a * B + j) * static_cast<float>(band - j));
      std::swap(pool[j], pool[std::min(pick, band - 1)]);
      successor_[a * B + j] = pool[j];
    }
  }
}

void SyntheticCorpus::sequence(int64_t index, int64_t length, int32_t* out) const {
  const int64_t band = vocab_size_ / num_domains_, B = branching_;
  const uint64_t stream = stream_id(seed_ + static_cast<uint64_t>(index), "synthetic.sequence");
  if (length <= 0) return;
  int32_t token = static_cast<int32_t>(domain_of(index) * band +
                                       static_cast<int64_t>(uniform01(stream, 0) * static_cast<float>(band)));
  out[0] = token;
  for (int64_t i = 1; i < length; ++i) {
    double u = uniform01(stream, static_cast<uint64_t>(i));
    int64_t j = 0;
    for (double acc = successor_prob_[0]; j + 1 < B && u >= acc; acc += successor_prob_[++j]) {
    }
    token = successor_[token * B + j];
    out[i] = token;
  }
}

double SyntheticCorpus::entropy_rate() const {
  double h = 0;
  for (double p : successor_prob_) h -= p * std::log(p);
  return h;
}

}  // namespace moe
