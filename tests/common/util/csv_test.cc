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

// Old Excel for Mac ("CSV (Macintosh)") ends lines with a lone CR; mixed files read too.
TEST(ReadLinesTest, LoneCarriageReturnsEndLines) {
  testing::TempDir dir;
  testing::WriteText(dir / "mac.csv", "frame,1\r0,1\r1,0\r");
  auto mac = ReadLines(dir / "mac.csv");
  ASSERT_TRUE(mac.ok());
  EXPECT_THAT(mac->lines, ElementsAre("frame,1", "0,1", "1,0"));
  testing::WriteText(dir / "mixed.csv", "a\r\nb\rc\nd");
  auto mixed = ReadLines(dir / "mixed.csv");
  ASSERT_TRUE(mixed.ok());
  EXPECT_THAT(mixed->lines, ElementsAre("a", "b", "c", "d"));
}

TEST(DropTrailingEmptyFieldsTest, KeepsTheHeadersWidth) {
  std::vector<std::string> header = {"image", "AU1", "", " "};
  DropTrailingEmptyFields(header);
  EXPECT_THAT(header, ElementsAre("image", "AU1"));
  std::vector<std::string> row = {"a.jpg", "", ""};
  DropTrailingEmptyFields(row, 2);
  EXPECT_THAT(row, ElementsAre("a.jpg", ""));  // an empty cell within the header's width stays
}

TEST(IsBlankRecordTest, EmptiedSpreadsheetRowsAreBlank) {
  EXPECT_TRUE(IsBlankRecord(""));
  EXPECT_TRUE(IsBlankRecord(" ,, ,\t,"));
  EXPECT_FALSE(IsBlankRecord(",,1,"));
  EXPECT_FALSE(IsBlankRecord("a"));
  EXPECT_TRUE(IsBlankRecord(";;;", ';'));
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
  for (const char* not_finite : {"nan", "inf", "-inf", "NaN"}) {
    auto v = ParseDouble(not_finite, "p3");
    ASSERT_FALSE(v.ok()) << not_finite;
    EXPECT_THAT(std::string(v.status().message()), ::testing::HasSubstr("p3: '"));
  }
}

// CsvTable: the header is the first line with data; rows keep their line numbers across blank
// records, CRLF and lone-CR line ends; a BOM is not part of the first column's name; a column
// named twice is found at its first place; errors and Where name the path and line.
TEST(CsvTableTest, KeepsLineNumbersAndNamesThePathInErrors) {
  auto t = ParseCsvTable("\xEF\xBB\xBF\n,,\nid,weight,id\r\na,1,x\r\n\r\n , ,\rb,\"2,5\",y\n",
                         "w.csv");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->header_line, 3u);
  EXPECT_EQ(t->WhereHeader(), "w.csv:3");
  EXPECT_THAT(t->header, ElementsAre("id", "weight", "id"));
  EXPECT_EQ(t->column.at("id"), 0u);
  ASSERT_EQ(t->rows.size(), 2u);
  EXPECT_THAT(t->line, ElementsAre(4u, 7u));
  EXPECT_EQ(t->Where(1), "w.csv:7");
  EXPECT_EQ(t->At(0, "id"), "a");
  EXPECT_EQ(t->At(1, "weight"), "2,5");
  EXPECT_EQ(t->At(1, "nothing"), "");

  auto no_path = ParseCsvTable("a,b\n1,2\n");
  ASSERT_TRUE(no_path.ok());
  EXPECT_EQ(no_path->Where(0), "line 2");
  auto empty = ParseCsvTable(" \n,,\n");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->header_line, 0u);
  EXPECT_TRUE(empty->rows.empty());

  auto bad = ParseCsvTable("a,b\n1,2\n\"3,4\n", "w.csv");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "w.csv:3: unterminated quoted field");

  testing::TempDir dir;
  testing::WriteText(dir.path() + "/w.csv", "id,weight\r1,2\r");
  auto read = ReadCsvTable(dir.path() + "/w.csv");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->Where(0), dir.path() + "/w.csv:2");
  auto missing = ReadCsvTable(dir.path() + "/none.csv");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), ::testing::HasSubstr("none.csv"));
}

}  // namespace
}  // namespace mal
