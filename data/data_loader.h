// Training data for the trainer: sources of fixed-length token sequences (the synthetic corpus, a
// token file), the train/eval split, and the data-parallel loader that hands every rank its share
// of each global batch in a shuffled order fixed by (seed, epoch).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/synthetic_corpus.h"
#include "data/token_file.h"

namespace moe {

// A sequence that cannot be read: a damaged token file found while reading it (a token >= vocab_size,
// pages that cannot be mapped). Not an InvalidArgument: only the rank reading that sequence sees it,
// so a caller inside collectives must take the other ranks down (moe-train's handler of other errors
// does), not exit as from a check that every rank makes alike.
class DataReadError : public std::runtime_error {
 public:
  explicit DataReadError(const std::string& what) : std::runtime_error(what) {}
};

// A fixed set of sequences, each seq_tokens() = seq_len + 1 tokens long: a model reads tokens
// [0, seq_len) and predicts tokens [1, seq_len + 1). Implementations are immutable after
// construction, so every const method may be called from several threads at once.
class SequenceSource {
 public:
  virtual ~SequenceSource() = default;
  virtual int64_t num_sequences() const = 0;
  virtual int64_t seq_tokens() const = 0;
  // Writes the seq_tokens() tokens of sequence `index` (in [0, num_sequences())) to out.
  virtual void sequence(int64_t index, int32_t* out) const = 0;
  // What index `index` holds in epoch `epoch` of the loader: sequence(index), except for a source
  // whose indices stand for different sequences from epoch to epoch (BlendedSource).
  virtual void sequence_in_epoch(int64_t index, uint64_t /*epoch*/, int32_t* out) const { sequence(index, out); }
  // Every token is in [0, vocab_size()).
  virtual int64_t vocab_size() const = 0;
  // The domain a sequence was drawn from, or -1 when the source does not know.
  virtual int64_t domain_of(int64_t index) const = 0;
};

// The built-in synthetic corpus (data/synthetic_corpus.h): sequences 0 .. cfg.synthetic_sequences - 1,
// each a pure function of (seed, index), with their domains known.
class SyntheticSource : public SequenceSource {
 public:
  // InvalidArgument for a bad cfg (DataConfig::validate_synthetic) or seq_len < 1.
  SyntheticSource(const DataConfig& cfg, int64_t vocab_size, int64_t seq_len, uint64_t seed);

  int64_t num_sequences() const override { return num_sequences_; }
  int64_t seq_tokens() const override { return seq_len_ + 1; }
  void sequence(int64_t index, int32_t* out) const override;
  int64_t vocab_size() const override { return corpus_.vocab_size(); }
  int64_t domain_of(int64_t index) const override { return corpus_.domain_of(index); }
  const SyntheticCorpus& corpus() const { return corpus_; }

 private:
  SyntheticCorpus corpus_;
  int64_t num_sequences_, seq_len_;
};

// Non-overlapping windows of seq_len + 1 tokens over a token file: sequence i is tokens
// [i * (seq_len + 1), (i + 1) * (seq_len + 1)). The tail shorter than a window is not used, and the
// pair (last token of window i, first token of window i + 1) is never a training example.
// Domains are unknown (-1). The file is not loaded: each sequence() maps and reads just its own
// window (TokenFileReader), so memory does not grow with the file, and its tokens are checked
// against the file's vocab_size as they are read.
class TokenFileSource : public SequenceSource {
 public:
  // Opens `path` (TokenFileReader::open: InvalidArgument naming the file and what is wrong). Also
  // InvalidArgument when seq_len < 1 or the file has fewer tokens than one window (naming the
  // file, its token count and the window).
  TokenFileSource(const std::string& path, int64_t seq_len);

  int64_t num_sequences() const override { return num_sequences_; }
  int64_t seq_tokens() const override { return seq_len_ + 1; }
  // Throws DataReadError naming the file and the position of a token >= vocab_size in the window (or
  // why its pages cannot be mapped).
  void sequence(int64_t index, int32_t* out) const override;
  int64_t vocab_size() const override { return file_->vocab_size(); }
  int64_t domain_of(int64_t) const override { return -1; }
  int64_t num_tokens() const { return file_->size(); }
  const std::string& name() const { return file_->path(); }
  // The tokenizer that made the file (its record; version 1: the byte tokenizer).
  const TokenizerRecord& tokenizer() const { return file_->tokenizer(); }

 private:
  std::unique_ptr<TokenFileReader> file_;
  int64_t seq_len_, num_sequences_;
};

// A half-open range [begin, end) of sequence indices.
struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

// The training and held-out evaluation sequences of one source, disjoint and covering it.
struct DataSplit {
  IndexRange train;
  IndexRange eval;  // empty when eval_fraction = 0
};

// eval = the LAST ceil(eval_fraction * N) sequences, train = the rest. A product within 1e-9
// (relative) of an integer counts as that integer, so 0.3 of 10 sequences is 3, not 4 from
// floating-point rounding; any eval_fraction > 0 holds out at least one sequence.
// InvalidArgument unless 0 <= eval_fraction < 1 and at least one training sequence remains
// (naming N, the fraction and the held-out count). When a separate evaluation file is given, the
// trainer uses {0, N} of each source instead.
DataSplit make_split(int64_t num_sequences, double eval_fraction);
DataSplit make_split(const SequenceSource& source, double eval_fraction);

// Rank `rank`'s contiguous share of `range` out of world_size ranks: sizes differ by at most one and
// may be zero; the shares of all ranks are disjoint and cover the range (for evaluation).
IndexRange rank_shard(IndexRange range, int rank, int world_size);

// Where a loader is: the next batch comes from step `step_in_epoch` of epoch `epoch`. Meaningful
// only for a loader with the same split, seed, world_size and batch_size (the trainer keeps those
// in its checkpoint and refuses a mismatch).
struct LoaderPosition {
  uint64_t epoch = 0;
  uint64_t step_in_epoch = 0;
  bool operator==(const LoaderPosition&) const = default;
};

// Hands one data-parallel rank its part of each global batch of world_size x batch_size sequences.
//
// Order: epoch e visits the split's n sequences (sequence_in_epoch(index, e)) in a permutation that
// depends only on (seed, e, n),
// a Fisher-Yates shuffle driven by counter-based random numbers (core/random.h), so the order is the
// same for any number of ranks. Global step s of an epoch takes permutation positions
// [s*W*B, (s+1)*W*B); rank r gets positions s*W*B + r*B .. s*W*B + r*B + B - 1, so the ranks' batches
// are disjoint and each epoch uses every sequence at most once. An epoch has floor(n / (W*B)) steps;
// the last n mod (W*B) positions of its permutation are dropped (a different set each epoch), and
// the next step starts the next epoch.
//
// Deterministic: the same (source, range, seed, rank, world_size, batch_size) give the same batches
// bit for bit. The source must outlive the loader. Not thread-safe (next_batch mutates the position).
class DataLoader {
 public:
  // InvalidArgument unless 0 <= begin < end <= src.num_sequences(), world_size >= 1,
  // 0 <= rank < world_size, batch_size >= 1, src.seq_tokens() >= 2, and the split holds at least
  // world_size * batch_size sequences (naming both numbers).
  DataLoader(const SequenceSource& src, int64_t begin, int64_t end, int rank, int world_size,
             int64_t batch_size, uint64_t seed);

  // Fills this rank's next batch and advances by one global step:
  //   inputs  (batch_size, seq_len) tokens 0 .. seq_len - 1 of each sequence
  //   targets (batch_size, seq_len) tokens 1 .. seq_len of each sequence
  //   domains (batch_size) each sequence's domain (-1 if unknown); may be null
  void next_batch(int32_t* inputs, int32_t* targets, int64_t* domains);

  LoaderPosition position() const { return pos_; }
  // Continues from `p` exactly as the loader that reported it. InvalidArgument unless
  // p.step_in_epoch < steps_per_epoch().
  void restore(const LoaderPosition& p);

  int64_t seq_len() const { return seq_len_; }
  int64_t batch_size() const { return batch_size_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

 private:
  void build_permutation(uint64_t epoch);  // perm_ for `epoch`

  const SequenceSource& src_;
  int64_t begin_, n_;
  int rank_, world_size_;
  int64_t batch_size_, seq_len_, steps_per_epoch_;
  uint64_t seed_;
  LoaderPosition pos_;
  std::vector<int64_t> perm_;  // (n_) offsets into the split, for epoch perm_epoch_
  uint64_t perm_epoch_ = 0;
  bool perm_valid_ = false;
  std::vector<int32_t> seq_buf_;  // (seq_len + 1)
};

}  // namespace moe
