#include "common/data/folds.h"

#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace mal::data {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

DatasetIndex IndexOf(const std::vector<std::string>& subjects, int per_subject,
                     const std::string& format = "bp4d") {
  DatasetIndex index;
  index.format = format;
  index.aus = {1, 2};
  for (const std::string& s : subjects) {
    for (int i = 0; i < per_subject; ++i) {
      Sample x;
      x.id = absl::StrCat(s, "/", i);
      x.subject = s;
      x.au = {static_cast<int8_t>(i % 2), static_cast<int8_t>(i % 4 == 0 ? kAuUnknown : 0)};
      index.samples.push_back(x);
    }
  }
  return index;
}

std::vector<std::string> AllOf(const std::string& dataset) {
  std::vector<std::string> all;
  for (const auto& part : StandardParts(dataset)) all.insert(all.end(), part.begin(), part.end());
  return all;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

TEST(FoldsTest, StandardBp4dFoldsTestOnThePublishedParts) {
  const DatasetIndex index = IndexOf(AllOf("bp4d"), 100);
  auto folds = MakeFolds(index, FoldOptions{});
  ASSERT_TRUE(folds.ok()) << folds.status();
  ASSERT_EQ(folds->size(), 3u);
  const auto& parts = StandardParts("bp4d");
  EXPECT_THAT((*folds)[0].test_subjects, ElementsAreArray(Sorted(parts[2])));
  EXPECT_THAT((*folds)[1].test_subjects, ElementsAreArray(Sorted(parts[1])));
  EXPECT_THAT((*folds)[2].test_subjects, ElementsAreArray(Sorted(parts[0])));
  EXPECT_EQ(parts[0].size() + parts[1].size() + parts[2].size(), 41u);
  for (const Fold& f : *folds) {
    std::set<std::string> train(f.train_subjects.begin(), f.train_subjects.end());
    for (const std::string& s : f.test_subjects) EXPECT_FALSE(train.count(s)) << s;
    // 2% of each training subject's 100 samples go to validation, none from test subjects.
    EXPECT_EQ(f.val.size(), 2 * f.train_subjects.size());
    EXPECT_EQ(f.train.size() + f.val.size(), 100 * f.train_subjects.size());
    EXPECT_EQ(f.test.size(), 100 * f.test_subjects.size());
    std::set<int64_t> seen(f.train.begin(), f.train.end());
    for (int64_t v : f.val) EXPECT_TRUE(seen.insert(v).second);
    for (int64_t v : f.val) EXPECT_TRUE(train.count(index.samples[v].subject));
  }
}

TEST(FoldsTest, AllSubjectsFoldTrainsOnEverySubjectWithTheSameReserve) {
  const DatasetIndex index = IndexOf(AllOf("bp4d"), 100);
  auto all = AllSubjectsFold(index, FoldOptions{});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->number, 0);
  EXPECT_EQ(all->train_subjects.size(), 41u);
  EXPECT_TRUE(all->test.empty());
  EXPECT_EQ(all->train.size() + all->val.size(), index.samples.size());
  // A subject reserves the same validation samples as in the folds it trains in.
  auto folds = MakeFolds(index, FoldOptions{});
  ASSERT_TRUE(folds.ok());
  const std::set<int64_t> val_all(all->val.begin(), all->val.end());
  for (int64_t v : (*folds)[0].val) EXPECT_TRUE(val_all.count(v)) << v;
}

TEST(FoldsTest, PureFunctionOfIndexProtocolAndSeed) {
  const DatasetIndex index = IndexOf(AllOf("bp4d"), 60);
  FoldOptions o;
  o.seed = 5;
  auto a = MakeFolds(index, o), b = MakeFolds(index, o);
  o.seed = 6;
  auto c = MakeFolds(index, o);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (size_t k = 0; k < a->size(); ++k) {
    EXPECT_EQ((*a)[k].val, (*b)[k].val);
    EXPECT_EQ((*a)[k].train, (*b)[k].train);
  }
  EXPECT_NE((*a)[0].val, (*c)[0].val);
}

TEST(FoldsTest, DisfaAcceptsSn033ForSn013) {
  std::vector<std::string> subjects = AllOf("disfa");
  std::replace(subjects.begin(), subjects.end(), std::string("SN013"), std::string("SN033"));
  auto folds = MakeFolds(IndexOf(subjects, 10, "disfa"), FoldOptions{});
  ASSERT_TRUE(folds.ok()) << folds.status();
  EXPECT_THAT((*folds)[1].test_subjects, ::testing::Contains("SN033"));
  EXPECT_EQ((*folds)[1].test_subjects.size(), 9u);
}

TEST(FoldsTest, StandardRejectsUnknownSubjectsAndSuggestsKFold) {
  auto folds = MakeFolds(IndexOf({"F001", "X9"}, 5), FoldOptions{});
  ASSERT_FALSE(folds.ok());
  EXPECT_THAT(std::string(folds.status().message()), HasSubstr("X9"));
  EXPECT_THAT(std::string(folds.status().message()), HasSubstr("cv.folds"));
}

TEST(FoldsTest, StandardNeedsEveryPart) {
  auto folds = MakeFolds(IndexOf({"F001", "F003"}, 5), FoldOptions{});  // parts 1 and 2 only
  ASSERT_FALSE(folds.ok());
  EXPECT_THAT(std::string(folds.status().message()), HasSubstr("part3"));
}

TEST(FoldsTest, SeededKFoldCoversEverySubjectOnce) {
  std::vector<std::string> subjects;
  for (int i = 0; i < 10; ++i) subjects.push_back(absl::StrCat("s", i));
  FoldOptions o;
  o.protocol = "kfold";
  o.folds = 5;
  o.seed = 7;
  auto folds = MakeFolds(IndexOf(subjects, 50, "csv"), o);
  ASSERT_TRUE(folds.ok()) << folds.status();
  ASSERT_EQ(folds->size(), 5u);
  std::multiset<std::string> tested;
  for (const Fold& f : *folds) {
    EXPECT_EQ(f.test_subjects.size(), 2u);
    tested.insert(f.test_subjects.begin(), f.test_subjects.end());
  }
  EXPECT_EQ(tested.size(), 10u);
  EXPECT_EQ(std::set<std::string>(tested.begin(), tested.end()).size(), 10u);
  o.folds = 11;
  EXPECT_FALSE(MakeFolds(IndexOf(subjects, 5, "csv"), o).ok());
}

TEST(FoldsTest, SubjectSplitReservesWholeTrainingSubjects) {
  const DatasetIndex index = IndexOf(AllOf("bp4d"), 30);
  FoldOptions o;
  o.val_split = FoldOptions::ValSplit::kSubjects;
  o.val_fraction = 0.1;
  auto folds = MakeFolds(index, o);
  ASSERT_TRUE(folds.ok()) << folds.status();
  for (const Fold& f : *folds) {
    // 10% of 27 or 28 training subjects rounds to 3; every one of their samples is reserved.
    ASSERT_EQ(f.val_subjects.size(), 3u) << "fold " << f.number;
    const std::set<std::string> reserved(f.val_subjects.begin(), f.val_subjects.end());
    const std::set<std::string> train(f.train_subjects.begin(), f.train_subjects.end());
    for (const std::string& s : reserved) EXPECT_TRUE(train.count(s)) << s;
    EXPECT_EQ(f.val.size(), 30 * reserved.size());
    for (int64_t v : f.val) EXPECT_TRUE(reserved.count(index.samples[v].subject));
    for (int64_t t : f.train) EXPECT_FALSE(reserved.count(index.samples[t].subject));
    for (int64_t t : f.test) EXPECT_FALSE(reserved.count(index.samples[t].subject));
    EXPECT_EQ(f.train.size() + f.val.size(), 30 * f.train_subjects.size());
  }
  // A pure function of the inputs; another seed reserves other subjects.
  auto again = MakeFolds(index, o);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0].val_subjects, (*folds)[0].val_subjects);
  o.seed = 2;
  auto other = MakeFolds(index, o);
  ASSERT_TRUE(other.ok());
  EXPECT_NE((*other)[0].val_subjects, (*folds)[0].val_subjects);
  // The final fit reserves whole subjects too.
  auto all = AllSubjectsFold(index, o);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->val_subjects.size(), 4u);  // 10% of 41
  EXPECT_EQ(all->train.size() + all->val.size(), index.samples.size());
}

TEST(FoldsTest, SubjectSplitReservesAtLeastTwoAndKeepsOneToTrain) {
  std::vector<std::string> subjects;
  for (int i = 0; i < 6; ++i) subjects.push_back(absl::StrCat("s", i));
  FoldOptions o;
  o.protocol = "kfold";
  o.folds = 2;
  o.val_split = FoldOptions::ValSplit::kSubjects;
  o.val_fraction = 0.02;  // 2% of 3 training subjects rounds to 0: at least 2 are reserved
  auto folds = MakeFolds(IndexOf(subjects, 4, "csv"), o);
  ASSERT_TRUE(folds.ok()) << folds.status();
  for (const Fold& f : *folds) {
    EXPECT_EQ(f.val_subjects.size(), 2u);
    EXPECT_EQ(f.train.size(), 4u);  // the one training subject left
  }
  o.val_fraction = 0.5;  // 2 of 3 (at most all but one)
  folds = MakeFolds(IndexOf(subjects, 4, "csv"), o);
  ASSERT_TRUE(folds.ok()) << folds.status();
  EXPECT_EQ((*folds)[0].val_subjects.size(), 2u);
  // Four subjects in two folds leave two training subjects: too few to reserve two and train.
  o.val_fraction = 0.05;
  auto too_few = MakeFolds(IndexOf({"a", "b", "c", "d"}, 4, "csv"), o);
  ASSERT_FALSE(too_few.ok());
  EXPECT_EQ(too_few.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(too_few.status().message()), HasSubstr("mal.val_split"));
  EXPECT_THAT(std::string(too_few.status().message()), HasSubstr("fold 1 has 2 training subject"));
}

TEST(FoldsTest, PositiveRatesIgnoreUnknownLabels) {
  const DatasetIndex index = IndexOf({"F001"}, 8);
  std::vector<int64_t> all = {0, 1, 2, 3, 4, 5, 6, 7};
  const std::vector<double> rates = PositiveRates(index, all);
  EXPECT_DOUBLE_EQ(rates[0], 0.5);
  EXPECT_DOUBLE_EQ(rates[1], 0.0);
}

}  // namespace
}  // namespace mal::data
