// Several sequence sources (token files) blended by weight into one source whose draws follow the
// weights exactly in every epoch, deterministic in (seed, epoch) so that a resumed run sees the same
// data as an uninterrupted one (data.train_files).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/data_loader.h"

namespace moe {

// The blend of F sources with n_f sequences each and weights w_f (normalised to sum 1).
//
// Size: M = n_1 + ... + n_F draws per epoch, as many as the files hold together. File f gets m_f of
// them, w_f M rounded by largest remainder (ties: the lower f), so the m_f sum to M; draws
// [o_f, o_f + m_f) with o_f = m_1 + ... + m_{f-1} are file f's. The loader shuffles the M draws per
// epoch, so each batch mixes the files in proportion to their weights.
//
// Which sequence a draw reads: file f's draws are counted across epochs, g = epoch * m_f + j for its
// j-th draw of the epoch, and cut into passes over the file of n_f draws each; pass p = g / n_f visits
// the file's sequences once each in the order k -> (a k + b) mod n_f (a coprime to n_f, a and b from
// (seed, f, p)), at k = g mod n_f. So a file with a small weight (m_f < n_f) is walked through over
// several epochs rather than contributing the same m_f sequences every epoch, and a file with a large
// one (m_f > n_f) is repeated, each of its sequences once per pass. Everything is a pure function of
// (seed, epoch, index): no table, O(F) memory.
class BlendedSource : public SequenceSource {
 public:
  // InvalidArgument unless sources and weights are non-empty and of the same length, every weight is
  // finite and > 0, the sources have the same seq_tokens() and vocab_size() (naming both files of a
  // mismatch by `names`), and every file gets at least one draw (m_f >= 1, naming the file).
  BlendedSource(std::vector<std::unique_ptr<SequenceSource>> sources, const std::vector<double>& weights,
                const std::vector<std::string>& names, uint64_t seed);

  int64_t num_sequences() const override { return total_; }
  int64_t seq_tokens() const override { return sources_.front()->seq_tokens(); }
  // The draw in epoch 0.
  void sequence(int64_t index, int32_t* out) const override { sequence_in_epoch(index, 0, out); }
  void sequence_in_epoch(int64_t index, uint64_t epoch, int32_t* out) const override;
  int64_t vocab_size() const override { return sources_.front()->vocab_size(); }
  int64_t domain_of(int64_t) const override { return -1; }

  // Draws of source f per epoch (m_f) and the sequence of source f that draw `index` reads in `epoch`.
  int64_t draws_of(size_t f) const { return draws_[f]; }
  struct Draw {
    size_t source;
    int64_t sequence;
  };
  Draw draw(int64_t index, uint64_t epoch) const;

 private:
  std::vector<std::unique_ptr<SequenceSource>> sources_;
  std::vector<int64_t> draws_;  // m_f
  std::vector<int64_t> first_;  // o_f
  int64_t total_ = 0;           // M
  uint64_t seed_;
};

}  // namespace moe
