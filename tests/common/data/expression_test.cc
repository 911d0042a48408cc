#include "common/data/expression.h"

#include <gtest/gtest.h>

namespace mal::data {
namespace {

TEST(ExpressionTest, RafDbOrderRoundTrips) {
  EXPECT_EQ(ExpressionFromRafDb(1), kSurprise);
  EXPECT_EQ(ExpressionFromRafDb(2), kFear);
  EXPECT_EQ(ExpressionFromRafDb(3), kDisgust);
  EXPECT_EQ(ExpressionFromRafDb(4), kHappiness);
  EXPECT_EQ(ExpressionFromRafDb(5), kSadness);
  EXPECT_EQ(ExpressionFromRafDb(6), kAnger);
  EXPECT_EQ(ExpressionFromRafDb(7), kNeutral);
  EXPECT_EQ(ExpressionFromRafDb(0), -1);
  EXPECT_EQ(ExpressionFromRafDb(8), -1);
  for (int e = 0; e < kNumExpressions; ++e) EXPECT_EQ(ExpressionFromRafDb(RafDbFromExpression(e)), e);
}

TEST(ExpressionTest, AffectNetOrderDiffers) {
  EXPECT_EQ(ExpressionFromAffectNet(0), kNeutral);
  EXPECT_EQ(ExpressionFromAffectNet(1), kHappiness);
  EXPECT_EQ(ExpressionFromAffectNet(2), kSadness);
  EXPECT_EQ(ExpressionFromAffectNet(3), kSurprise);
  EXPECT_EQ(ExpressionFromAffectNet(4), kFear);
  EXPECT_EQ(ExpressionFromAffectNet(5), kDisgust);
  EXPECT_EQ(ExpressionFromAffectNet(6), kAnger);
  for (int code : {7, 8, 9, 10, -1}) EXPECT_EQ(ExpressionFromAffectNet(code), -1);
}

TEST(ExpressionTest, ParsesNamesAliasesAndDigits) {
  EXPECT_EQ(*ParseExpression("Happy"), kHappiness);
  EXPECT_EQ(*ParseExpression(" anger "), kAnger);
  EXPECT_EQ(*ParseExpression("3"), kSurprise);
  EXPECT_FALSE(ParseExpression("7").ok());
  EXPECT_FALSE(ParseExpression("contempt").ok());
  EXPECT_STREQ(ExpressionName(kFear), "fear");
}

}  // namespace
}  // namespace mal::data
