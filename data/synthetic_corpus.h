// The built-in synthetic corpus: token sequences from several "domains", each a first-order Markov
// chain living on its own band of the vocabulary with its own transition table, so a user can
// watch experts specialise by domain. Every sequence is a pure function of (seed, index).
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

struct SyntheticCorpusConfig {
  int64_t vocab_size = 64;
  int64_t num_domains = 4;   // domain d uses tokens [d * V / D, (d + 1) * V / D)
  int64_t branching = 3;     // successors per token, with probabilities 0.6, 0.25, 0.15, ... (normalised)
  uint64_t seed = 1234;

  void validate() const;  // InvalidArgument naming the bad field and its accepted range
};

class SyntheticCorpus {
 public:
  explicit SyntheticCorpus(const SyntheticCorpusConfig& cfg);

  int64_t domain_of(int64_t index) const { return index % cfg_.num_domains; }
  // Writes the `length` tokens of sequence `index` to out.
  void sequence(int64_t index, int64_t length, int32_t* out) const;
  // The lowest achievable mean next-token loss (nats) for a model that knows the domain and the
  // current token: the entropy of the successor distribution.
  double entropy_rate() const;
  const SyntheticCorpusConfig& config() const { return cfg_; }

 private:
  SyntheticCorpusConfig cfg_;
  std::vector<double> successor_prob_;      // (branching) shared by all tokens
  std::vector<int32_t> successor_;          // (V, branching) successors of each token, in its band
};

}  // namespace moe
