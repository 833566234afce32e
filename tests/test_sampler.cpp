// Sampling: greedy, seeded repeatability, top-k/top-p truncation, and the
// empirical distribution against the softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "ekva/error.h"
#include "model/sampler.h"

namespace ekva {
namespace {

TEST(Sampler, GreedyPicksTheArgmax) {
  Sampler s({});
  const std::vector<float> logits = {0.1f, 3.f, -1.f, 2.9f};
  EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  const std::vector<float> logits = {0.f, 0.5f, 1.f, 0.2f, -0.3f};
  Sampler a({1.f, 0, 1.f, 42}), b({1.f, 0, 1.f, 42});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.sample(logits), b.sample(logits));
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  const std::vector<float> logits = {5.f, 4.f, 3.f, 0.f, 0.f, 0.f};
  Sampler s({2.f, 2, 1.f, 1});
  for (int i = 0; i < 500; ++i) EXPECT_LT(s.sample(logits), 2);
}

TEST(Sampler, TopPKeepsTheNucleus) {
  // probabilities ~ 0.64, 0.24, 0.09, 0.03: top-p 0.8 keeps the first two.
  const std::vector<float> logits = {std::log(0.64f), std::log(0.24f), std::log(0.09f),
                                     std::log(0.03f)};
  Sampler s({1.f, 0, 0.8f, 3});
  for (int i = 0; i < 1000; ++i) EXPECT_LT(s.sample(logits), 2);
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  const std::vector<float> logits = {0.f, 1.f, 2.f};
  Sampler s({1.f, 0, 1.f, 9});
  std::map<int, int> counts;
  const int n = 60000;
  for (int i = 0; i < n; ++i) ++counts[s.sample(logits)];
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  for (int t = 0; t < 3; ++t)
    EXPECT_NEAR(counts[t] / double{n}, std::exp(double(t)) / z, 0.01) << t;
}

TEST(Sampler, RejectsBadOptions) {
  EXPECT_THROW(Sampler({-1.f, 0, 1.f, 0}), Error);
  EXPECT_THROW(Sampler({1.f, -2, 1.f, 0}), Error);
  EXPECT_THROW(Sampler({1.f, 0, 0.f, 0}), Error);
  EXPECT_THROW(Sampler({1.f, 0, 1.5f, 0}), Error);
}

}  // namespace
}  // namespace ekva
