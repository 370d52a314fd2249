// Tests of choosing the next token (launch/generate/sampling.h): greedy, temperature, top-k, top-p, seeds.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "launch/generate/sampling.h"

namespace {

using moe::choose_token;
using moe::SamplingOptions;

// Logits whose softmax at temperature 1 is (0.5, 0.3, 0.15, 0.05): log of them (shifted, which changes nothing).
const std::vector<float> kLogits = {std::log(0.5f) + 3, std::log(0.3f) + 3, std::log(0.15f) + 3, std::log(0.05f) + 3};

// How often each token is drawn in `draws` draws.
std::vector<double> frequencies(const std::vector<float>& logits, const SamplingOptions& o, int draws) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) f[choose_token(logits, o, static_cast<uint64_t>(i))] += 1;
  for (double& x : f) x /= draws;
  return f;
}

// The draws come from a fixed counter-based stream, so these frequencies are the same on every run. Their
// distance from the probabilities is that of 20000 independent draws: a standard deviation of at most
// sqrt(0.25 / 20000) = 0.0035, so 0.02 (more than 5 of them); a wrong temperature or renormalisation
// moves some probability by >= 0.05.
constexpr int kDraws = 20000;
constexpr double kFrequencyTol = 0.02;

void expect_frequencies(const std::vector<double>& got, const std::vector<double>& expected) {
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], kFrequencyTol) << "token " << i;
}

TEST(Sampling, GreedyTakesTheHighestLogitAndTheLowerIdOfATie) {
  EXPECT_EQ(choose_token(std::vector<float>{0.1f, 2.f, -1.f, 2.f}, SamplingOptions{}, 0), 1);
  EXPECT_EQ(choose_token(kLogits, SamplingOptions{}, 7), 0);
}

TEST(Sampling, TemperatureOneDrawsTheSoftmax) {
  SamplingOptions o;
  o.temperature = 1;
  expect_frequencies(frequencies(kLogits, o, kDraws), {0.5, 0.3, 0.15, 0.05});
}

TEST(Sampling, TemperatureTwoFlattensTheDistribution) {
  SamplingOptions o;
  o.temperature = 2;  // p_i proportional to sqrt(q_i)
  const double s = std::sqrt(0.5) + std::sqrt(0.3) + std::sqrt(0.15) + std::sqrt(0.05);
  expect_frequencies(frequencies(kLogits, o, kDraws),
                     {std::sqrt(0.5) / s, std::sqrt(0.3) / s, std::sqrt(0.15) / s, std::sqrt(0.05) / s});
}

TEST(Sampling, TopKRenormalisesOverTheKMostLikely) {
  SamplingOptions o;
  o.temperature = 1;
  o.top_k = 2;
  expect_frequencies(frequencies(kLogits, o, kDraws), {0.5 / 0.8, 0.3 / 0.8, 0, 0});
  EXPECT_EQ(frequencies(kLogits, o, kDraws)[2], 0.0);  // never drawn, not just rarely
}

TEST(Sampling, TopPKeepsTheFewestTokensReachingP) {
  SamplingOptions o;
  o.temperature = 1;
  o.top_p = 0.7;  // 0.5 < 0.7 <= 0.5 + 0.3: tokens 0 and 1
  const std::vector<double> f = frequencies(kLogits, o, kDraws);
  expect_frequencies(f, {0.5 / 0.8, 0.3 / 0.8, 0, 0});
  EXPECT_EQ(f[2] + f[3], 0.0);
  o.top_p = 0.45;  // the most likely token alone already reaches it
  EXPECT_EQ(frequencies(kLogits, o, 200)[0], 1.0);
}

TEST(Sampling, TheSameSeedGivesTheSameDrawsAndAnotherSeedOthers) {
  SamplingOptions a, b;
  a.temperature = b.temperature = 1;
  a.seed = 11;
  b.seed = 12;
  std::vector<int32_t> first, again, other;
  for (uint64_t i = 0; i < 64; ++i) {
    first.push_back(choose_token(kLogits, a, i));
    again.push_back(choose_token(kLogits, a, i));
    other.push_back(choose_token(kLogits, b, i));
  }
  EXPECT_EQ(first, again);
  EXPECT_NE(first, other);  // 64 draws of a distribution with entropy > 1 bit: equal only by a fixed-seed fluke
}

}  // namespace
