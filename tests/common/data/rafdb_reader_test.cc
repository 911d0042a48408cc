#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/data/expression.h"
#include "common/data/reader.h"
#include "tests/test_util.h"

namespace mal::data {
namespace {

using ::testing::HasSubstr;

class RafDbReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteText(dir_ / "EmoLabel/list_patition_label.txt",
                       "train_00001.jpg 5\n"
                       "train_00002.jpg 1\n"
                       "train_00003.jpg 9\n"
                       "test_0001.jpg 7\n"
                       "train_00004.jpg 4\n");
    // Distribution in RAF order (Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral).
    testing::WriteText(dir_ / "EmoLabel/distribution_basic.txt",
                       "train_00001.jpg 0 0 0 0.1 0.75 0.1 0.05\n"
                       "train_00002.jpg 12 4 0 0 0 0 24\n"
                       "test_0001.jpg 0 0 0 0 0 0 1\n");
    for (const char* stem : {"train_00001", "train_00002", "test_0001"}) {
      testing::WriteImage(dir_ / (std::string("Image/aligned/") + stem + "_aligned.jpg"));
    }
  }
  testing::TempDir dir_;
};

TEST_F(RafDbReaderTest, MapsLabelsToCanonicalOrderWithConsistency) {
  ReaderOptions o;
  o.root = dir_.path();
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 2u);  // train split by default
  EXPECT_EQ(index->samples[0].id, "train_00001");
  EXPECT_EQ(index->samples[0].expression, kSadness);  // RAF 5
  EXPECT_FLOAT_EQ(index->samples[0].consistency, 0.75f);
  EXPECT_EQ(index->samples[1].expression, kSurprise);  // RAF 1
  EXPECT_FLOAT_EQ(index->samples[1].consistency, 0.3f);  // 12 of 40 votes, normalised
  EXPECT_THAT(index->samples[1].image, HasSubstr("Image/aligned/train_00002_aligned.jpg"));
  const auto& skips = index->report.skips();
  EXPECT_THAT(skips.at("malformed_line").examples[0], HasSubstr("list_patition_label.txt:3"));
  EXPECT_THAT(skips.at("missing_image").examples[0], HasSubstr("train_00004"));
}

TEST_F(RafDbReaderTest, SplitsByPrefix) {
  ReaderOptions o;
  o.root = dir_.path();
  o.split = "test";
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 1u);
  EXPECT_EQ(index->samples[0].expression, kNeutral);
  EXPECT_EQ(index->samples[0].split, "test");
  // Both partitions are reported, with the one read.
  ASSERT_EQ(index->partitions.size(), 2u);
  EXPECT_EQ(index->partitions[0].name, "train");
  EXPECT_EQ(index->partitions[0].entries, 3);  // the malformed line is counted as skipped, not here
  EXPECT_FALSE(index->partitions[0].used);
  EXPECT_EQ(index->partitions[1].name, "test");
  EXPECT_EQ(index->partitions[1].entries, 1);
  EXPECT_TRUE(index->partitions[1].used);
}

TEST_F(RafDbReaderTest, ConfigurableDistributionPathAndMissingOne) {
  ReaderOptions o;
  o.root = dir_.path();
  o.distribution = "nowhere.txt";
  auto missing = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nowhere.txt"));

  testing::WriteText(dir_ / "other/dist.txt", "train_00001.jpg 1 0 0 0 0 0 0\n");
  o.distribution = dir_ / "other/dist.txt";
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_FLOAT_EQ(index->samples[0].consistency, 0.0f);  // all votes on Surprise, label Sadness
  EXPECT_FLOAT_EQ(index->samples[1].consistency, -1.0f);
}

TEST_F(RafDbReaderTest, DistributionKeyedByAlignedNameOrStem) {
  testing::WriteText(dir_ / "EmoLabel/distribution_basic.txt",
                     "train_00001_aligned.jpg 0 0 0 0 0.5 0.5 0\ntrain_00002 1 0 0 0 0 0 0\n");
  ReaderOptions o;
  o.root = dir_.path();
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_FLOAT_EQ(index->samples[0].consistency, 0.5f);
  EXPECT_FLOAT_EQ(index->samples[1].consistency, 1.0f);
}

TEST_F(RafDbReaderTest, ImagesInAnyCaseOrFormatAndRepeatedLinesAreReported) {
  testing::WriteText(dir_ / "EmoLabel/list_patition_label.txt",
                     "train_00001.jpg 5\ntrain_00005.jpg 4\ntrain_00006.jpg 1\ntrain_00001.jpg 4\n");
  testing::WriteImage(dir_ / "Image/aligned/train_00005_aligned.JPG");
  testing::WriteImage(dir_ / "Image/aligned/train_00006_aligned.png");
  testing::WriteText(dir_ / "EmoLabel/distribution_basic.txt",
                     "train_00001.jpg 0 0 0 0.1 0.75 0.1 0.05\n"
                     "train_00001.jpg nan 0 0 0 1 0 0\n"
                     "train_00005.jpg 0 0 0 1 0 0 0\n"
                     "train_00005.jpg 0 0 0 0 1 0 0\n");
  ReaderOptions o;
  o.root = dir_.path();
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->samples.size(), 3u);
  EXPECT_THAT(index->samples[1].image, HasSubstr("train_00005_aligned.JPG"));
  EXPECT_THAT(index->samples[2].image, HasSubstr("train_00006_aligned.png"));
  EXPECT_FLOAT_EQ(index->samples[0].consistency, 0.75f);  // the nan line did not replace it
  EXPECT_FLOAT_EQ(index->samples[1].consistency, 1.0f);   // the first of two lines
  const auto& skips = index->report.skips();
  EXPECT_THAT(skips.at("malformed_line").examples[0], HasSubstr("distribution_basic.txt:2: p1"));
  EXPECT_THAT(skips.at("duplicate_line").examples[0], HasSubstr("distribution_basic.txt:4"));
  EXPECT_THAT(skips.at("duplicate_sample").examples[0], HasSubstr("train_00001: listed again"));
}

TEST_F(RafDbReaderTest, AnEmptyListSaysWhichFile) {
  testing::WriteText(dir_ / "EmoLabel/list_patition_label.txt", "\n");
  ReaderOptions o;
  o.root = dir_.path();
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()),
              HasSubstr("empty_label_file x1 (e.g. " + (dir_ / "EmoLabel/list_patition_label.txt")));
}

// A list re-indexed from 0 by a training script: its lines labelled 1..6 would read one
// expression off, so the whole file is refused, not only its lines labelled 0.
TEST_F(RafDbReaderTest, AListNumberedFromZeroIsRefused) {
  testing::WriteText(dir_ / "EmoLabel/list_patition_label.txt",
                     "train_00001.jpg 4\ntrain_00002.jpg 0\ntest_0001.jpg 6\n");
  ReaderOptions o;
  o.root = dir_.path();
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_FALSE(index.ok());
  EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(index.status().message()),
              HasSubstr("list_patition_label.txt:2: label 0: RAF-DB's labels are 1..7"));
}

// Files that macOS and archivers leave beside the data are not data.
TEST_F(RafDbReaderTest, SystemFilesBesideTheImagesAreNotImages) {
  testing::WriteText(dir_ / "Image/aligned/._train_00004_aligned.jpg", "AppleDouble");
  ReaderOptions o;
  o.root = dir_.path();
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->samples.size(), 2u);
  EXPECT_THAT(index->report.skips().at("missing_image").examples[0], HasSubstr("train_00004"));
}

TEST_F(RafDbReaderTest, MissingListNamesExpectedFile) {
  testing::TempDir empty;
  ReaderOptions o;
  o.root = empty.path();
  auto index = LoadDataset("rafdb", o, DataRole::kFe);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()), HasSubstr("list_patition_label.txt"));
}

}  // namespace
}  // namespace mal::data
