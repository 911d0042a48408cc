#include "common/metrics/au_metrics.h"

#include <gtest/gtest.h>

namespace mal {
namespace {

TEST(AuF1Test, AccumulatesOverBatchesAndExcludesUnknown) {
  AuF1 f1(2);
  // AU0: TP, FP, FN, TN -> F1 = 2/(2+1+1) = 0.5. AU1: all unknown but one TP -> 1.
  const float probs[] = {0.9f, 0.9f, 0.7f, 0.1f};
  const float labels[] = {1, 1, 0, 1};
  const float mask[] = {1, 1, 1, 0};
  f1.Add(probs, labels, mask, 2);
  const float probs2[] = {0.2f, 0.6f, 0.4f, 0.3f};
  const float labels2[] = {1, 1, 0, 0};
  const float mask2[] = {1, 0, 1, 0};
  f1.Add(probs2, labels2, mask2, 2);
  EXPECT_EQ(f1.tp(0), 1);
  EXPECT_EQ(f1.fp(0), 1);
  EXPECT_EQ(f1.fn(0), 1);
  EXPECT_DOUBLE_EQ(f1.F1(0), 0.5);
  EXPECT_DOUBLE_EQ(f1.F1(1), 1.0);
  EXPECT_DOUBLE_EQ(f1.Mean(), 0.75);
}

TEST(AuF1Test, CountsFalsePositivesAndFalseNegativesApart) {
  // One AU, five frames: 1 TP, 3 FP, 1 FN, no TN. F1 = 2 / (2 + 3 + 1) = 1/3 either way round,
  // so only the separate counts show an FP counted as an FN.
  AuF1 f1(1);
  const float probs[] = {0.9f, 0.8f, 0.7f, 0.6f, 0.2f};
  const float labels[] = {1, 0, 0, 0, 1};
  const float mask[] = {1, 1, 1, 1, 1};
  f1.Add(probs, labels, mask, 5);
  EXPECT_EQ(f1.tp(0), 1);
  EXPECT_EQ(f1.fp(0), 3);
  EXPECT_EQ(f1.fn(0), 1);
  EXPECT_DOUBLE_EQ(f1.F1(0), 1.0 / 3);
}

TEST(AuF1Test, ThresholdIsInclusive) {
  AuF1 f1(1);
  const float p[] = {0.5f}, y[] = {1}, m[] = {1};
  f1.Add(p, y, m, 1);
  EXPECT_DOUBLE_EQ(f1.F1(0), 1.0);
}

TEST(SpearmanTest, MonotoneTiesAndDegenerate) {
  EXPECT_DOUBLE_EQ(SpearmanCorrelation({1, 2, 3, 4}, {10, 20, 30, 400}), 1.0);
  EXPECT_DOUBLE_EQ(SpearmanCorrelation({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
  EXPECT_NEAR(SpearmanCorrelation({1, 1, 2, 2}, {1, 2, 3, 4}), 0.894427, 1e-6);
  EXPECT_EQ(SpearmanCorrelation({1, 1}, {1, 2}), 0.0);
  EXPECT_EQ(SpearmanCorrelation({1}, {1}), 0.0);
}

TEST(QuantileTest, Interpolates) {
  EXPECT_DOUBLE_EQ(Quantile({3, 1, 2, 4}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(Quantile({3, 1, 2, 4}, 0), 1);
  EXPECT_DOUBLE_EQ(Quantile({3, 1, 2, 4}, 1), 4);
}

}  // namespace
}  // namespace mal

namespace mal {
namespace {

TEST(TuneThresholdsTest, PicksTheF1BestThresholdPerAuOnKnownLabels) {
  // AU slot 0: positives score 0.3-0.4, negatives 0.1-0.2: any threshold in (0.2, 0.3] separates;
  // ties go to the one closest to 0.5, 0.30. Slot 1: well separated around 0.5 -> 0.5 kept (closest
  // to 0.5 among the perfect ones). Slot 2: no known positive -> 0.5. A masked sample (row 4) would
  // break slot 0's separation if counted.
  const std::vector<float> probs = {0.35f, 0.9f, 0.1f,  //
                                    0.40f, 0.8f, 0.2f,  //
                                    0.10f, 0.1f, 0.3f,  //
                                    0.20f, 0.2f, 0.9f,  //
                                    0.95f, 0.1f, 0.1f};
  const std::vector<float> labels = {1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  std::vector<float> mask(15, 1);
  mask[12] = 0;
  const std::vector<double> t = TuneThresholds(probs, labels, mask, 3);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_NEAR(t[0], 0.30, 1e-9);
  EXPECT_NEAR(t[1], 0.50, 1e-9);
  EXPECT_NEAR(t[2], 0.50, 1e-9);
  EXPECT_TRUE(TuneThresholds({}, {}, {}, 2) == (std::vector<double>{0.5, 0.5}));
}

}  // namespace
}  // namespace mal
