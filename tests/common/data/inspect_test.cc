#include "common/data/inspect.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mal::data {
namespace {

using ::testing::HasSubstr;

TEST(InspectTest, SummarisesLabelsSkipsAndFolds) {
  DatasetIndex index;
  index.format = "bp4d";
  index.aus = {1, 12};
  for (const char* s : {"F001", "F003", "F004"}) {
    for (int i = 0; i < 4; ++i) {
      Sample x;
      x.subject = s;
      x.au = {static_cast<int8_t>(i == 0 ? kAuPresent : kAuAbsent), kAuUnknown};
      index.samples.push_back(x);
    }
  }
  (void)index.report.Skip("missing_image", "F001_T1.csv:9: frame 9");
  auto folds = MakeFolds(index, FoldOptions{});
  ASSERT_TRUE(folds.ok()) << folds.status();
  const v1::DatasetInspection in = Inspect(index, "standard", *folds);
  EXPECT_EQ(in.samples(), 12);
  EXPECT_EQ(in.skipped(), 1);
  EXPECT_EQ(in.subjects_size(), 3);
  EXPECT_EQ(in.au_stats(0).positive(), 3);
  EXPECT_DOUBLE_EQ(in.au_stats(0).positive_rate(), 0.25);
  EXPECT_EQ(in.au_stats(1).masked(), 12);
  EXPECT_EQ(in.folds_size(), 3);
  EXPECT_EQ(in.folds(0).test_subjects(0), "F004");
  const std::string text = FormatInspection(in);
  EXPECT_THAT(text, HasSubstr("missing_image"));
  EXPECT_THAT(text, HasSubstr("e.g. F001_T1.csv:9"));
  EXPECT_THAT(text, HasSubstr("fold 1"));
}

}  // namespace
}  // namespace mal::data
