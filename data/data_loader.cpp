// Sequence sources, the train/eval split and the data-parallel loader (data/data_loader.h).
#include "data/data_loader.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/check.h"
#include "core/random.h"

namespace moe {

SyntheticSource::SyntheticSource(const DataConfig& cfg, int64_t vocab_size, int64_t seq_len, uint64_t seed)
    : corpus_(cfg, vocab_size, seed), num_sequences_(cfg.synthetic_sequences), seq_len_(seq_len) {
  MOE_REQUIRE(seq_len >= 1, "synthetic source seq_len = ", seq_len, " must be >= 1");
}

void SyntheticSource::sequence(int64_t index, int32_t* out) const {
  MOE_ASSERT(index >= 0 && index < num_sequences_, "sequence index outside the source");
  corpus_.sequence(index, seq_len_ + 1, out);
}

namespace {
std::unique_ptr<TokenFileReader> open_token_file(const std::string& path) {
  std::unique_ptr<TokenFileReader> reader;
  const Status s = TokenFileReader::open(path, &reader);
  if (!s.ok()) throw InvalidArgument(s.message());
  return reader;
}
}  // namespace

TokenFileSource::TokenFileSource(const std::string& path, int64_t seq_len)
    : file_(open_token_file(path)), seq_len_(seq_len) {
  MOE_REQUIRE(seq_len >= 1, "token file source seq_len = ", seq_len, " must be >= 1");
  const int64_t window = seq_len + 1;
  num_sequences_ = file_->size() / window;
  MOE_REQUIRE(num_sequences_ >= 1, "token file '", path, "' has ", file_->size(),
              " tokens, fewer than one sequence window of seq_len + 1 = ", window, " tokens");
}

void TokenFileSource::sequence(int64_t index, int32_t* out) const {
  MOE_ASSERT(index >= 0 && index < num_sequences_, "sequence index outside the source");
  const Status s = file_->read(index * (seq_len_ + 1), seq_len_ + 1, out);
  if (!s.ok()) throw DataReadError(s.message());
}

DataSplit make_split(int64_t num_sequences, double eval_fraction) {
  MOE_REQUIRE(eval_fraction >= 0.0 && eval_fraction < 1.0, "eval_fraction = ", eval_fraction,
              " must be in [0, 1)");
  MOE_REQUIRE(num_sequences >= 1, "cannot split ", num_sequences, " sequences: need at least 1");
  const double x = eval_fraction * static_cast<double>(num_sequences);
  const double nearest = std::round(x);
  int64_t n_eval = std::fabs(x - nearest) <= 1e-9 * std::max(1.0, x) ? static_cast<int64_t>(nearest)
                                                                      : static_cast<int64_t>(std::ceil(x));
  if (eval_fraction > 0.0 && n_eval == 0) n_eval = 1;
  MOE_REQUIRE(n_eval < num_sequences, "eval_fraction = ", eval_fraction, " of ", num_sequences,
              " sequences holds out ", n_eval, " for evaluation and leaves none for training");
  DataSplit s;
  s.train = {0, num_sequences - n_eval};
  s.eval = {num_sequences - n_eval, num_sequences};
  return s;
}

DataSplit make_split(const SequenceSource& source, double eval_fraction) {
  return make_split(source.num_sequences(), eval_fraction);
}

IndexRange rank_shard(IndexRange range, int rank, int world_size) {
  MOE_REQUIRE(world_size >= 1 && rank >= 0 && rank < world_size, "rank = ", rank, " must be in [0, world_size = ",
              world_size, ")");
  MOE_REQUIRE(range.begin <= range.end, "index range [", range.begin, ", ", range.end, ") is reversed");
  const int64_t n = range.size();
  return {range.begin + n * rank / world_size, range.begin + n * (rank + 1) / world_size};
}

DataLoader::DataLoader(const SequenceSource& src, int64_t begin, int64_t end, int rank, int world_size,
                       int64_t batch_size, uint64_t seed)
    : src_(src), begin_(begin), n_(end - begin), rank_(rank), world_size_(world_size),
      batch_size_(batch_size), seq_len_(src.seq_tokens() - 1), steps_per_epoch_(0), seed_(seed) {
  MOE_REQUIRE(0 <= begin && begin < end && end <= src.num_sequences(), "data loader range [", begin, ", ", end,
              ") must be a non-empty part of the source's [0, ", src.num_sequences(), ")");
  MOE_REQUIRE(world_size >= 1, "data loader world_size = ", world_size, " must be >= 1");
  MOE_REQUIRE(rank >= 0 && rank < world_size, "data loader rank = ", rank, " must be in [0, world_size = ",
              world_size, ")");
  MOE_REQUIRE(batch_size >= 1, "data loader batch_size = ", batch_size, " must be >= 1");
  MOE_REQUIRE(src.seq_tokens() >= 2, "data loader: sequences of ", src.seq_tokens(),
              " tokens are too short; need at least 2 (an input and its target)");
  const int64_t global_batch = static_cast<int64_t>(world_size) * batch_size;
  MOE_REQUIRE(n_ >= global_batch, "data loader: the split has ", n_,
              " sequences, fewer than one global batch of world_size x batch_size = ", world_size, " x ",
              batch_size, " = ", global_batch);
  steps_per_epoch_ = n_ / global_batch;
  seq_buf_.resize(static_cast<size_t>(seq_len_ + 1));
}

void DataLoader::build_permutation(uint64_t epoch) {
  perm_.resize(static_cast<size_t>(n_));
  for (int64_t i = 0; i < n_; ++i) perm_[i] = i;
  // Fisher-Yates from the back: swap position i with j uniform in [0, i], j from counter i of the
  // epoch's stream. The modulo's bias is below n / 2^64, far below anything measurable.
  const uint64_t stream = mix64(stream_id(seed_, "data_loader.shuffle") ^ mix64(epoch));
  for (int64_t i = n_ - 1; i > 0; --i) {
    const uint64_t bits = mix64(stream ^ mix64(static_cast<uint64_t>(i)));
    const int64_t j = static_cast<int64_t>(bits % static_cast<uint64_t>(i + 1));
    std::swap(perm_[i], perm_[j]);
  }
  perm_epoch_ = epoch;
  perm_valid_ = true;
}

void DataLoader::next_batch(int32_t* inputs, int32_t* targets, int64_t* domains) {
  if (!perm_valid_ || perm_epoch_ != pos_.epoch) build_permutation(pos_.epoch);
  const int64_t L = seq_len_;
  const int64_t first = static_cast<int64_t>(pos_.step_in_epoch) * world_size_ * batch_size_ +
                        static_cast<int64_t>(rank_) * batch_size_;
  for (int64_t b = 0; b < batch_size_; ++b) {
    const int64_t index = begin_ + perm_[first + b];
    src_.sequence_in_epoch(index, pos_.epoch, seq_buf_.data());
    for (int64_t t = 0; t < L; ++t) {
      inputs[b * L + t] = seq_buf_[t];
      targets[b * L + t] = seq_buf_[t + 1];
    }
    if (domains != nullptr) domains[b] = src_.domain_of(index);
  }
  if (++pos_.step_in_epoch == static_cast<uint64_t>(steps_per_epoch_)) {
    ++pos_.epoch;
    pos_.step_in_epoch = 0;
  }
}

void DataLoader::restore(const LoaderPosition& p) {
  MOE_REQUIRE(p.step_in_epoch < static_cast<uint64_t>(steps_per_epoch_), "cannot restore the data loader to step ",
              p.step_in_epoch, " of epoch ", p.epoch, ": an epoch of this split has ", steps_per_epoch_,
              " steps (", n_, " sequences / (world_size x batch_size = ", world_size_, " x ", batch_size_, "))");
  pos_ = p;
}

}  // namespace moe
