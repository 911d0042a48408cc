#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/data/expression.h"
#include "common/data/reader.h"
#include "tests/test_util.h"

namespace mal::data {
namespace {

using ::testing::HasSubstr;

TEST(AffectNetReaderTest, MapsCodesAndSkipsNonBasicWithReasons) {
  testing::TempDir dir;
  testing::WriteText(
      dir / "Manually_Annotated_file_lists/training.csv",
      "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
      "1/a.jpg,2,3,10,12,\"1.0;2.0;3.0\",1,0.5,0.2\n"
      "1/b.jpg,0,0,16,16,1;2,6,-0.4,0.6\n"
      "1/c.jpg,0,0,16,16,1;2,7,0,0\n"
      "1/d.jpg,0,0,16,16,1;2,10,0,0\n"
      "1/e.jpg,0,0,16,16,1;2,x,0,0\n");
  testing::WriteText(dir / "Manually_Annotated_file_lists/validation.csv",
                     "subDirectory_filePath,expression\n2/f.jpg,0\n");
  for (const char* f : {"1/a.jpg", "1/b.jpg", "2/f.jpg"}) {
    testing::WriteImage(dir / (std::string("Manually_Annotated_Images/") + f));
  }
  ReaderOptions o;
  o.root = dir.path();
  auto index = LoadDataset("affectnet", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 2u);
  EXPECT_EQ(index->samples[0].expression, kHappiness);  // AffectNet 1
  EXPECT_EQ(index->samples[0].box[0], 2);
  EXPECT_EQ(index->samples[0].box[3], 12);
  EXPECT_EQ(index->samples[1].expression, kAnger);  // AffectNet 6
  const auto& skips = index->report.skips();
  EXPECT_EQ(skips.at("contempt_not_basic").count, 1);
  EXPECT_EQ(skips.at("no_basic_expression").count, 1);
  EXPECT_THAT(skips.at("malformed_line").examples[0], HasSubstr("training.csv:6"));

  o.split = "test";
  auto test = LoadDataset("affectnet", o, DataRole::kFe);
  ASSERT_TRUE(test.ok()) << test.status();
  ASSERT_EQ(test->samples.size(), 1u);
  EXPECT_EQ(test->samples[0].expression, kNeutral);
}

// Every AffectNet list has contempt / none / uncertain / non-face rows: strict reading still
// counts them (they are outside the 7 expressions by design, not a problem of the file). A row's
// trailing separator is no problem either.
TEST(AffectNetReaderTest, StrictStillCountsTheNonBasicCodes) {
  testing::TempDir dir;
  testing::WriteText(dir / "Manually_Annotated_file_lists/training.csv",
                     "subDirectory_filePath,expression\n1/a.jpg,1,\n1/b.jpg,7\n1/c.jpg,8\n");
  for (const char* f : {"1/a.jpg", "1/b.jpg", "1/c.jpg"}) {
    testing::WriteImage(dir / (std::string("Manually_Annotated_Images/") + f));
  }
  ReaderOptions o;
  o.root = dir.path();
  o.strict = true;
  auto index = LoadDataset("affectnet", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->samples.size(), 1u);
  EXPECT_EQ(index->report.skips().at("contempt_not_basic").count, 1);
  EXPECT_EQ(index->report.skips().at("no_basic_expression").count, 1);
}

TEST(AffectNetReaderTest, HeaderWithoutExpressionColumnIsAnError) {
  testing::TempDir dir;
  testing::WriteText(dir / "Manually_Annotated_file_lists/training.csv", "subDirectory_filePath,valence\n");
  ReaderOptions o;
  o.root = dir.path();
  auto index = LoadDataset("affectnet", o, DataRole::kFe);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()), HasSubstr("training.csv:1"));
}

}  // namespace
}  // namespace mal::data
