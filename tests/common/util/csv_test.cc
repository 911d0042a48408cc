#include "common/util/csv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace mal {
namespace {

using ::testing::ElementsAre;

TEST(SplitCsvLineTest, SplitsPlainAndQuotedFields) {
  auto f = SplitCsvLine("a,\"b,c\",\"say \"\"hi\"\"\",,d\r");
  ASSERT_TRUE(f.ok());
  EXPECT_THAT(*f, ElementsAre("a", "b,c", "say \"hi\"", "", "d"));
}

TEST(SplitCsvLineTest, RejectsUnterminatedQuote) {
  EXPECT_FALSE(SplitCsvLine("a,\"b").ok());
}

TEST(ReadLinesTest, KeepsLineNumbersAndStripsCrAndBom) {
  testing::TempDir dir;
  testing::WriteText(dir / "f.txt", "\xEF\xBB\xBFone\r\ntwo\n");
  auto lines = ReadLines(dir / "f.txt");
  ASSERT_TRUE(lines.ok());
  EXPECT_THAT(lines->lines, ElementsAre("one", "two"));
  EXPECT_EQ(lines->Where(1), dir / "f.txt:2");
}

TEST(ReadLinesTest, MissingFileNamesPath) {
  auto lines = ReadLines("/nonexistent/x.csv");
  ASSERT_FALSE(lines.ok());
  EXPECT_THAT(std::string(lines.status().message()), ::testing::HasSubstr("/nonexistent/x.csv"));
}

TEST(ParseNumberTest, NamesFieldOnError) {
  EXPECT_EQ(*ParseInt(" 42 ", "frame"), 42);
  auto bad = ParseInt("4x", "frame");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("frame"));
  EXPECT_DOUBLE_EQ(*ParseDouble("0.25", "p"), 0.25);
}

}  // namespace
}  // namespace mal
