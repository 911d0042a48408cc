#include "server/service/rate_limiter.h"

#include <gtest/gtest.h>

namespace mal::server {
namespace {

TEST(RateLimiterTest, SlidingWindowPerClient) {
  RateLimiter limiter(2, 60000);
  EXPECT_EQ(limiter.Acquire("a", 1000), 0);
  EXPECT_EQ(limiter.Acquire("a", 2000), 0);
  EXPECT_EQ(limiter.Acquire("a", 3000), 58000);  // the call at 1000 leaves at 61000
  EXPECT_EQ(limiter.Acquire("b", 3000), 0);      // another client
  EXPECT_EQ(limiter.Acquire("a", 60999), 1);
  EXPECT_EQ(limiter.Acquire("a", 61000), 0);
  EXPECT_EQ(limiter.Acquire("a", 61001), 999);  // 2000 and 61000 are in the window
}

TEST(RateLimiterTest, ZeroIsUnlimited) {
  RateLimiter limiter(0, 60000);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(limiter.Acquire("a", 5), 0);
}

}  // namespace
}  // namespace mal::server
