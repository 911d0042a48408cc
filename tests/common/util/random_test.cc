#include "common/util/random.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <gtest/gtest.h>

namespace mal {
namespace {

TEST(RngTest, SameSeedSameDraws) {
  Rng a(7), b(7);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.NextU64(), b.NextU64());
}

TEST(RngTest, DrawsAreInRangeAndRoughlyUniform) {
  Rng rng(1);
  double sum = 0, sum_sq = 0;
  int counts[5] = {};
  for (int i = 0; i < 20000; ++i) {
    const double u = rng.Uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    const int64_t k = rng.IntIn(-2, 2);
    ASSERT_GE(k, -2);
    ASSERT_LE(k, 2);
    ++counts[k + 2];
    const double z = rng.Normal();
    sum += z;
    sum_sq += z * z;
  }
  for (int c : counts) EXPECT_NEAR(c / 20000.0, 0.2, 0.02);
  EXPECT_NEAR(sum / 20000, 0.0, 0.03);
  EXPECT_NEAR(sum_sq / 20000, 1.0, 0.05);
}

TEST(RngTest, ShuffleIsAPermutationAndDeterministic) {
  std::vector<int> v(50), w;
  for (int i = 0; i < 50; ++i) v[i] = i;
  w = v;
  Rng a(3), b(3);
  a.Shuffle(v);
  b.Shuffle(w);
  EXPECT_EQ(v, w);
  std::vector<int> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sorted[i], i);
}

TEST(StableHashTest, KnownValue) {
  // FNV-1a 64 of "a" is fixed by definition: the same on every platform.
  EXPECT_EQ(StableHash("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_NE(MixSeed(1, 0), MixSeed(1, 1));
}

}  // namespace
}  // namespace mal
