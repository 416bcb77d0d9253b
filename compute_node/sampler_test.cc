// Tests of compute_node/sampler.h.
#include "compute_node/sampler.h"

#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace ultramem {
namespace {

TEST(SamplerTest, GreedyTakesArgmaxLowestOnTies) {
  Sampler s(SamplingParams{});
  std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(s.Sample(logits), 1);
}

TEST(SamplerTest, SameSeedSameTokens) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = 0.05f * i;
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 42;
  Sampler a(p), b(p);
  std::vector<int> ta, tb;
  for (int i = 0; i < 100; ++i) {
    ta.push_back(a.Sample(logits));
    tb.push_back(b.Sample(logits));
  }
  EXPECT_EQ(ta, tb);
  p.seed = 43;
  Sampler c(p);
  std::vector<int> tc;
  for (int i = 0; i < 100; ++i) tc.push_back(c.Sample(logits));
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, TopKKeepsOnlyKBest) {
  std::vector<float> logits = {5.0f, 4.0f, 3.0f, 2.0f, 1.0f};
  SamplingParams p;
  p.temperature = 10.0f;  // nearly uniform before the cut
  p.top_k = 2;
  Sampler s(p);
  for (int i = 0; i < 500; ++i) {
    int t = s.Sample(logits);
    EXPECT_TRUE(t == 0 || t == 1) << t;
  }
}

TEST(SamplerTest, TopPKeepsTheNucleus) {
  // Probabilities at T=1: about 0.665, 0.245, 0.090 -> top_p 0.8 keeps the first two.
  std::vector<float> logits = {2.0f, 1.0f, 0.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.8f;
  Sampler s(p);
  std::map<int, int> counts;
  for (int i = 0; i < 2000; ++i) counts[s.Sample(logits)]++;
  EXPECT_EQ(counts[2], 0);
  EXPECT_GT(counts[1], 300);  // 0.245/0.91 of 2000 ≈ 540
  EXPECT_GT(counts[0], 1000);
}

TEST(SamplerTest, TemperatureMatchesSoftmax) {
  std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 1/4, 3/4 at T = 1
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 7;
  Sampler s(p);
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.Sample(logits);
  EXPECT_NEAR(ones / static_cast<double>(n), 0.75, 0.02);
}

TEST(SamplerTest, ValidateRefusesBadParams) {
  SamplingParams p;
  p.temperature = -0.5f;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.top_p = 0.0f;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  p = {};
  p.top_k = -1;
  EXPECT_EQ(p.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
}

}  // namespace
}  // namespace ultramem
