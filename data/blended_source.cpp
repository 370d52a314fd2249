// Token files blended by weight (data/blended_source.h).
#include "data/blended_source.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "core/random.h"

namespace moe {

BlendedSource::BlendedSource(std::vector<std::unique_ptr<SequenceSource>> sources, const std::vector<double>& weights,
                             const std::vector<std::string>& names, uint64_t seed)
    : sources_(std::move(sources)), seed_(seed) {
  const size_t F = sources_.size();
  MOE_REQUIRE(F >= 1 && weights.size() == F && names.size() == F, "a blend needs at least one source, with one "
              "weight and one name each; got ", F, " sources, ", weights.size(), " weights, ", names.size(), " names");
  double weight_sum = 0;
  for (size_t f = 0; f < F; ++f) {
    MOE_REQUIRE(std::isfinite(weights[f]) && weights[f] > 0, "blend weight ", weights[f], " of ", names[f],
                " must be finite and > 0");
    MOE_REQUIRE(sources_[f]->vocab_size() == sources_[0]->vocab_size(), "blended files must share one vocabulary: ",
                names[f], " has vocab_size ", sources_[f]->vocab_size(), " but ", names[0], " has ",
                sources_[0]->vocab_size());
    MOE_ASSERT(sources_[f]->seq_tokens() == sources_[0]->seq_tokens(), "the blend's sources have one window length");
    weight_sum += weights[f];
    total_ += sources_[f]->num_sequences();
  }
  // Largest remainder: floor(w_f M) each, then one more to the largest fractional parts (lower f first).
  draws_.resize(F);
  std::vector<double> remainder(F);
  int64_t assigned = 0;
  for (size_t f = 0; f < F; ++f) {
    const double exact = weights[f] / weight_sum * static_cast<double>(total_);
    draws_[f] = static_cast<int64_t>(std::floor(exact));
    remainder[f] = exact - static_cast<double>(draws_[f]);
    assigned += draws_[f];
  }
  std::vector<size_t> order(F);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
  for (int64_t i = 0; assigned < total_; ++i, ++assigned) ++draws_[order[static_cast<size_t>(i) % F]];
  first_.resize(F);
  for (size_t f = 0; f < F; ++f) {
    MOE_REQUIRE(draws_[f] >= 1, names[f], " gets no draw: its weight ", weights[f], " of ", weight_sum,
                " times the blend's ", total_, " sequences rounds to 0; raise its weight");
    first_[f] = f == 0 ? 0 : first_[f - 1] + draws_[f - 1];
  }
}

BlendedSource::Draw BlendedSource::draw(int64_t index, uint64_t epoch) const {
  MOE_ASSERT(index >= 0 && index < total_, "sequence index outside the blend");
  const size_t f = static_cast<size_t>(std::upper_bound(first_.begin(), first_.end(), index) - first_.begin()) - 1;
  const uint64_t n = static_cast<uint64_t>(sources_[f]->num_sequences());
  const uint64_t g = epoch * static_cast<uint64_t>(draws_[f]) + static_cast<uint64_t>(index - first_[f]);
  const uint64_t pass = g / n, k = g % n;
  // The pass's order k -> (a k + b) mod n, a bijection because gcd(a, n) = 1.
  const uint64_t stream = mix64(stream_id(seed_, "data.blend") ^ mix64(f) ^ mix64(mix64(pass) + 1));
  uint64_t a = n == 1 ? 1 : 1 + mix64(stream) % (n - 1);
  while (std::gcd(a, n) != 1) a = a % (n - 1) + 1;  // the next candidate in [1, n); 1 always qualifies
  const uint64_t b = mix64(stream ^ 0x9e3779b97f4a7c15ULL) % n;
  __extension__ typedef unsigned __int128 uint128;  // a GCC and Clang type: -Wpedantic needs the marker
  const uint64_t sequence = static_cast<uint64_t>((static_cast<uint128>(a) * k + b) % n);
  return {f, static_cast<int64_t>(sequence)};
}

void BlendedSource::sequence_in_epoch(int64_t index, uint64_t epoch, int32_t* out) const {
  const Draw d = draw(index, epoch);
  sources_[d.source]->sequence(d.sequence, out);
}

}  // namespace moe
