// The built-in synthetic corpus: token sequences from several "domains", each a first-order Markov
// chain living on its own band of the vocabulary with its own transition table, so a user can
// watch experts specialise by domain. Every sequence is a pure function of (seed, index).
#pragma once

#include <cstdint>
#include <vector>

#include "data/data_config.h"

namespace moe {

// The corpus of cfg's synthetic_domains and synthetic_branching over tokens 0 .. vocab_size - 1.
class SyntheticCorpus {
 public:
  // InvalidArgument for a bad cfg (DataConfig::validate_synthetic), naming the key and its accepted range.
  SyntheticCorpus(const DataConfig& cfg, int64_t vocab_size, uint64_t seed);

  int64_t domain_of(int64_t index) const { return index % num_domains_; }
  // Writes the `length` tokens of sequence `index` to out.
  void sequence(int64_t index, int64_t length, int32_t* out) const;
  // The lowest achievable mean next-token loss (nats) for a model that knows the domain and the
  // current token: the entropy of the successor distribution.
  double entropy_rate() const;
  int64_t vocab_size() const { return vocab_size_; }

 private:
  int64_t vocab_size_, num_domains_, branching_;
  uint64_t seed_;
  std::vector<double> successor_prob_;      // (branching) shared by all tokens
  std::vector<int32_t> successor_;          // (V, branching) successors of each token, in its band
};

}  // namespace moe
