#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/data/folds.h"
#include "common/data/reader.h"
#include "tests/test_util.h"

namespace mal::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class GftReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteText(dir_ / "split.txt", "# subject split\n001A train\n002B,test\n");
    testing::WriteText(dir_ / "AU_OCC/001A_1.csv", "frame,AU01,AU02\n1,1,\n2,0,9\n");
    testing::WriteText(dir_ / "AU_OCC/002B.csv", "frame,AU02,AU01\n7,1,0\n");
    testing::WriteText(dir_ / "AU_OCC/003C.csv", "frame,AU01,AU02\n1,1,1\n");
    testing::WriteImage(dir_ / "001A_1/1.jpg");
    testing::WriteImage(dir_ / "001A_1/0002.jpg");
    testing::WriteImage(dir_ / "002B/7.jpg");
  }
  testing::TempDir dir_;
};

TEST_F(GftReaderTest, ReadsSplitAndPerVideoCsvWithEmptyOrNineUnknown) {
  ReaderOptions o;
  o.root = dir_.path();
  o.aus = {1, 2};
  auto index = LoadDataset("gft", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 3u);
  EXPECT_EQ(index->samples[0].subject, "001A");
  EXPECT_EQ(index->samples[0].split, "train");
  EXPECT_THAT(index->samples[0].au, ElementsAre(kAuPresent, kAuUnknown));
  EXPECT_THAT(index->samples[1].au, ElementsAre(kAuAbsent, kAuUnknown));
  EXPECT_EQ(index->samples[2].split, "test");
  EXPECT_THAT(index->samples[2].au, ElementsAre(kAuAbsent, kAuPresent));
  EXPECT_THAT(index->report.skips().at("subject_not_in_split").examples[0], HasSubstr("003C"));

  auto folds = MakeFolds(*index, FoldOptions{});
  ASSERT_TRUE(folds.ok()) << folds.status();
  ASSERT_EQ(folds->size(), 1u);
  EXPECT_THAT((*folds)[0].test_subjects, ElementsAre("002B"));
}

TEST_F(GftReaderTest, BadSplitFileNamesLine) {
  testing::WriteText(dir_ / "split.txt", "001A train\n002B holdout\n");
  ReaderOptions o;
  o.root = dir_.path();
  auto index = LoadDataset("gft", o, DataRole::kAu);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()), HasSubstr("split.txt:2"));
}

}  // namespace
}  // namespace mal::data
