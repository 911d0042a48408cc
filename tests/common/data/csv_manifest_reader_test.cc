#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/data/expression.h"
#include "common/data/reader.h"
#include "tests/test_util.h"

namespace mal::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(CsvManifestReaderTest, ReadsAuColumnsExpressionAndConsistency) {
  testing::TempDir dir;
  testing::WriteText(dir / "manifest.csv",
                     "image,subject,AU01,au_2,AU12,expression,consistency\n"
                     "img/a.jpg,s1,1,0,,happy,0.9\n"
                     "img/b.jpg,s2,0,-1,1,,\n"
                     "img/c.jpg,s2,2,0,0,,\n"
                     "img/d.jpg,s3,1,1,1,bored,\n");
  testing::WriteImage(dir / "img/a.jpg");
  testing::WriteImage(dir / "img/b.jpg");
  testing::WriteImage(dir / "img/c.jpg");
  testing::WriteImage(dir / "img/d.jpg");
  ReaderOptions o;
  o.root = dir.path();
  auto index = LoadDataset("csv", o, DataRole::kAu);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(index->aus, ElementsAre(1, 2, 12));
  ASSERT_EQ(index->samples.size(), 2u);
  EXPECT_THAT(index->samples[0].au, ElementsAre(kAuPresent, kAuAbsent, kAuUnknown));
  EXPECT_EQ(index->samples[0].expression, kHappiness);
  EXPECT_FLOAT_EQ(index->samples[0].consistency, 0.9f);
  EXPECT_THAT(index->samples[1].au, ElementsAre(kAuAbsent, kAuUnknown, kAuPresent));
  const auto& bad = index->report.skips().at("malformed_line");
  EXPECT_EQ(bad.count, 2);
  EXPECT_THAT(bad.examples[0], HasSubstr("manifest.csv:4: AU1"));
  EXPECT_THAT(bad.examples[1], HasSubstr("manifest.csv:5: unknown expression 'bored'"));
}

TEST(CsvManifestReaderTest, SplitColumnSelectsRowsAndDuplicatesAreReported) {
  testing::TempDir dir;
  testing::WriteText(dir / "manifest.csv",
                     "image,subject,split,AU1,\n"  // a trailing separator on the header
                     "img/a.jpg,s1,train,1\n"
                     "img/b.jpg,s2,test,0\n"
                     "img/a.jpg,s1,train,0\n"
                     ",,,\n"
                     "img/c.jpg,s3,,1\n");
  for (const char* f : {"img/a.jpg", "img/b.jpg", "img/c.jpg"}) testing::WriteImage(dir / f);
  ReaderOptions o;
  o.root = dir.path();
  auto all = LoadDataset("csv", o, DataRole::kAu);  // no split asked for: every row
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->samples.size(), 3u);
  EXPECT_EQ(all->samples[0].au[0], kAuPresent);  // the first listing of img/a.jpg is kept
  const auto& dup = all->report.skips().at("duplicate_sample");
  EXPECT_EQ(dup.count, 1);
  EXPECT_THAT(dup.examples[0], HasSubstr("img/a.jpg: listed again with other labels"));
  EXPECT_FALSE(all->report.skips().count("malformed_line"));  // ",,," is a blank row
  ASSERT_EQ(all->partitions.size(), 3u);  // train, test, unassigned

  o.split = "test";
  auto test = LoadDataset("csv", o, DataRole::kAu);
  ASSERT_TRUE(test.ok()) << test.status();
  ASSERT_EQ(test->samples.size(), 1u);
  EXPECT_EQ(test->samples[0].id, "img/b.jpg");

  o.strict = true;  // the repeated line is an error now
  o.split = "";
  auto strict = LoadDataset("csv", o, DataRole::kAu);
  ASSERT_FALSE(strict.ok());
  EXPECT_THAT(std::string(strict.status().message()), HasSubstr("duplicate_sample"));

  testing::WriteText(dir / "nosplit.csv", "image,AU1\nimg/a.jpg,1\n");
  o.strict = false;
  o.manifest = "nosplit.csv";
  o.split = "train";
  auto none = LoadDataset("csv", o, DataRole::kAu);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("no 'split' column"));
}

TEST(CsvManifestReaderTest, RequestedAuWithoutColumnIsAnError) {
  testing::TempDir dir;
  testing::WriteText(dir / "m.csv", "image,AU1\nx.jpg,1\n");
  ReaderOptions o;
  o.root = dir.path();
  o.manifest = "m.csv";
  o.aus = {1, 4};
  auto index = LoadDataset("csv", o, DataRole::kAu);
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()), HasSubstr("m.csv:1: no column for requested AU4"));
}

}  // namespace
}  // namespace mal::data
