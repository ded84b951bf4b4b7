#include "engine/sampler.h"

#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvtier::engine {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> LogProbs(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

// Frequencies of `draws` samples.
std::map<int32_t, double> Frequencies(Sampler& s, const std::vector<float>& logits, int draws) {
  std::map<int32_t, double> out;
  for (int i = 0; i < draws; ++i) out[s.Sample(logits)] += 1.0 / draws;
  return out;
}

TEST(SamplerTest, ArgmaxTakesLowestIndexOfMax) {
  EXPECT_EQ(Argmax(std::vector<float>{1, 3, 2, 3}), 1);
  EXPECT_EQ(Argmax(std::vector<float>{5}), 0);
  EXPECT_EQ(Argmax(std::vector<float>{-kInf, -kInf}), 0);
  EXPECT_EQ(Argmax(std::vector<float>{0, kInf, kInf}), 1);
  EXPECT_EQ(Argmax(std::vector<float>{}), -1);
}

TEST(SamplerTest, ArgmaxTreatsNaNAsMinusInfinity) {
  EXPECT_EQ(Argmax(std::vector<float>{kNaN, 1, 2}), 2);
  EXPECT_EQ(Argmax(std::vector<float>{1, kNaN, 0}), 0);
  EXPECT_EQ(Argmax(std::vector<float>{-5, kNaN, -1, kNaN}), 2);
  EXPECT_EQ(Argmax(std::vector<float>{kNaN, kNaN}), 0);
}

TEST(SamplerTest, GreedyTieBreaksToLowestId) {
  SamplingParams p;
  Sampler s(p);
  EXPECT_EQ(s.Sample(std::vector<float>{0.5f, 2.0f, 1.0f, 2.0f}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{kNaN, 2.0f, 2.0f}), 1);
}

TEST(SamplerTest, TopK1EqualsGreedy) {
  std::mt19937_64 rng(1);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  p.seed = 42;
  Sampler s(p);
  for (int i = 0; i < 200; ++i) {
    std::vector<float> logits(100);
    for (float& v : logits) v = dist(rng);
    if (i % 10 == 0) logits[17] = logits[3] = 50.0f;  // ties too
    ASSERT_EQ(s.Sample(logits), Argmax(logits)) << i;
  }
}

TEST(SamplerTest, SameSeedSameTokens) {
  std::vector<float> logits(64);
  for (int i = 0; i < 64; ++i) logits[i] = std::sin(i * 0.7f);
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_p = 0.9f;
  p.top_k = 40;
  p.seed = 1234;
  Sampler a(p), b(p);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 100; ++i) {
    ta.push_back(a.Sample(logits));
    tb.push_back(b.Sample(logits));
  }
  EXPECT_EQ(ta, tb);
  p.seed = 1235;
  Sampler c(p);
  for (int i = 0; i < 100; ++i) tc.push_back(c.Sample(logits));
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, TemperatureSamplingFollowsTheDistribution) {
  const std::vector<double> probs = {0.5, 0.3, 0.15, 0.05};
  const std::vector<float> logits = LogProbs(probs);
  const int draws = 40000;
  {
    SamplingParams p;
    p.temperature = 1.0f;
    p.seed = 7;
    Sampler s(p);
    std::map<int32_t, double> f = Frequencies(s, logits, draws);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], probs[i], 0.01) << i;
  }
  {
    // T = 0.5 squares the probabilities (then renormalizes).
    SamplingParams p;
    p.temperature = 0.5f;
    p.seed = 8;
    Sampler s(p);
    std::map<int32_t, double> f = Frequencies(s, logits, draws);
    double z = 0;
    for (double q : probs) z += q * q;
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], probs[i] * probs[i] / z, 0.01) << i;
  }
  {
    // Very hot: nearly uniform. NaN and -inf logits are never drawn.
    SamplingParams p;
    p.temperature = 1000.0f;
    p.seed = 9;
    Sampler s(p);
    std::vector<float> l = logits;
    l.push_back(kNaN);
    l.push_back(-kInf);
    std::map<int32_t, double> f = Frequencies(s, l, draws);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], 0.25, 0.015) << i;
    EXPECT_EQ(f.count(4), 0u);
    EXPECT_EQ(f.count(5), 0u);
  }
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingP) {
  // Ids deliberately out of probability order.
  const std::vector<double> probs = {0.1, 0.4, 0.2, 0.3};
  const std::vector<float> logits = LogProbs(probs);
  const int draws = 20000;
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.65f;  // 0.4 + 0.3 reaches it: keep {1, 3}
  p.seed = 3;
  {
    Sampler s(p);
    std::map<int32_t, double> f = Frequencies(s, logits, draws);
    EXPECT_EQ(f.size(), 2u);
    EXPECT_NEAR(f[1], 0.4 / 0.7, 0.015);
    EXPECT_NEAR(f[3], 0.3 / 0.7, 0.015);
  }
  {
    p.top_p = 0.75f;  // needs 0.4 + 0.3 + 0.2
    Sampler s(p);
    std::map<int32_t, double> f = Frequencies(s, logits, draws);
    EXPECT_EQ(f.size(), 3u);
    EXPECT_EQ(f.count(0), 0u);
    EXPECT_NEAR(f[2], 0.2 / 0.9, 0.015);
  }
  {
    p.top_p = 0.3f;  // the top token alone
    Sampler s(p);
    std::map<int32_t, double> f = Frequencies(s, logits, 1000);
    EXPECT_EQ(f.size(), 1u);
    EXPECT_EQ(f.count(1), 1u);
  }
  {
    // top_k first, then top_p over the renormalized top-k: top_k = 3 keeps {1, 3, 2} with
    // probabilities 4/9, 3/9, 2/9, and top_p = 0.75 is reached by {1, 3} (7/9), where the
    // unrenormalized 0.4 + 0.3 would not reach it.
    p.top_p = 0.75f;
    p.top_k = 3;
    Sampler s(p);
    std::map<int32_t, double> f = Frequencies(s, logits, draws);
    EXPECT_EQ(f.size(), 2u);
    EXPECT_NEAR(f[1], 4.0 / 7, 0.015);
    EXPECT_NEAR(f[3], 3.0 / 7, 0.015);
  }
}

TEST(SamplerTest, ValidateRejectsBadParams) {
  SamplingParams ok;
  EXPECT_TRUE(ok.Validate().ok());
  ok.temperature = 0.7f;
  ok.top_k = 5;
  ok.top_p = 1.0f;
  ok.max_tokens = 0;
  EXPECT_TRUE(ok.Validate().ok());
  auto bad = [](auto edit) {
    SamplingParams p;
    edit(p);
    return p.Validate().code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(bad([](SamplingParams& p) { p.temperature = -0.1f; }), kInvalid);
  EXPECT_EQ(bad([](SamplingParams& p) { p.temperature = kNaN; }), kInvalid);
  EXPECT_EQ(bad([](SamplingParams& p) { p.top_k = -1; }), kInvalid);
  EXPECT_EQ(bad([](SamplingParams& p) { p.top_p = 0.0f; }), kInvalid);
  EXPECT_EQ(bad([](SamplingParams& p) { p.top_p = 1.01f; }), kInvalid);
  EXPECT_EQ(bad([](SamplingParams& p) { p.top_p = kNaN; }), kInvalid);
  EXPECT_EQ(bad([](SamplingParams& p) { p.max_tokens = -1; }), kInvalid);
}

TEST(SamplerTest, ShouldStop) {
  SamplingParams p;
  p.max_tokens = 3;
  p.stop_token_ids = {7, 9};
  Sampler s(p);
  EXPECT_FALSE(s.ShouldStop(1, 1));
  EXPECT_TRUE(s.ShouldStop(9, 1));
  EXPECT_TRUE(s.ShouldStop(7, 2));
  EXPECT_FALSE(s.ShouldStop(8, 2));
  EXPECT_TRUE(s.ShouldStop(8, 3));
}

}  // namespace
}  // namespace kvtier::engine
