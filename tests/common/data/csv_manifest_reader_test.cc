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
