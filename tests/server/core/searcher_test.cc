#include "server/core/searcher.h"

#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/spec/spec.h"

namespace mal::server {
namespace {

v1::ExperimentSpec Spec(const std::string& search) {
  auto spec = ParseSpecYaml(absl::StrCat("name: s\ndata: {au: {format: bp4d, root: /b}, fe: {format: rafdb, root: /r}}\n",
                                         search),
                            "s.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status();
  ApplyDefaults(*spec);
  EXPECT_TRUE(ValidateSpec(*spec).ok()) << ValidateSpec(*spec);
  return *spec;
}

TEST(SearcherTest, NoSpaceIsOneTrialWithTheExperimentSeed) {
  auto plans = ExpandTrials(Spec("seed: 7\n"));
  ASSERT_TRUE(plans.ok());
  ASSERT_EQ(plans->size(), 1u);
  EXPECT_TRUE((*plans)[0].params.empty());
  EXPECT_EQ((*plans)[0].seed, 7);
}

TEST(SearcherTest, GridIsEveryCombinationLastKeyFastest) {
  auto plans = ExpandTrials(Spec(
      "search: {algorithm: grid, space: {mal.mode: {choice: [exact, heads_only]}, train.epochs: {int_uniform: [1, 3]}}}\n"));
  ASSERT_TRUE(plans.ok()) << plans.status();
  ASSERT_EQ(plans->size(), 6u);
  EXPECT_EQ((*plans)[0].params.at("mal.mode"), "exact");
  EXPECT_EQ((*plans)[0].params.at("train.epochs"), "1");
  EXPECT_EQ((*plans)[1].params.at("train.epochs"), "2");
  EXPECT_EQ((*plans)[3].params.at("mal.mode"), "heads_only");
  auto spec = TrialSpec(Spec("search: {algorithm: grid, space: {train.epochs: {int_uniform: [1, 3]}}}\n"), (*plans)[5]);
  ASSERT_TRUE(spec.ok());
  EXPECT_EQ(spec->train().epochs(), 3);
  EXPECT_EQ(spec->mal().mode(), "heads_only");
  EXPECT_TRUE(spec->search().space().empty());
}

TEST(SearcherTest, RandomIsSeededAndInsideItsBounds) {
  const auto spec = Spec(
      "seed: 3\nsearch: {algorithm: random, trials: 20, space: {train.lr: {log_uniform: [1e-4, 1e-2]}, "
      "train.momentum: {uniform: [0.5, 0.9]}}}\n");
  auto a = ExpandTrials(spec);
  auto b = ExpandTrials(spec);
  ASSERT_TRUE(a.ok());
  ASSERT_EQ(a->size(), 20u);
  std::set<std::string> distinct;
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].params, (*b)[i].params);
    const double lr = std::stod((*a)[i].params.at("train.lr"));
    EXPECT_GE(lr, 1e-4 * 0.999);
    EXPECT_LE(lr, 1e-2 * 1.001);
    const double m = std::stod((*a)[i].params.at("train.momentum"));
    EXPECT_GE(m, 0.5);
    EXPECT_LE(m, 0.9);
    distinct.insert((*a)[i].params.at("train.lr"));
    auto trial = TrialSpec(spec, (*a)[i]);
    ASSERT_TRUE(trial.ok());
    EXPECT_DOUBLE_EQ(trial->train().lr(), lr);
  }
  EXPECT_GT(distinct.size(), 15u);
}

// A draw keeps four significant digits unless they would round it out of its bounds: 0.99995 of
// [0.9999, 0.99999] is not "1" (an invalid momentum, refused as if the user had asked for it).
TEST(SearcherTest, ADrawIsNeverRoundedOutOfItsBounds) {
  const auto spec = Spec(
      "search: {algorithm: random, trials: 50, space: {train.momentum: {uniform: [0.9999, "
      "0.99999]}, train.lr: {log_uniform: [0.0999999, 0.1]}}}\n");
  auto plans = ExpandTrials(spec);
  ASSERT_TRUE(plans.ok()) << plans.status();
  int longer = 0;  // draws that needed more than four digits
  for (const TrialPlan& p : *plans) {
    longer += p.params.at("train.momentum").size() > 6;
    const double m = std::stod(p.params.at("train.momentum"));
    const double lr = std::stod(p.params.at("train.lr"));
    EXPECT_GE(m, 0.9999);
    EXPECT_LE(m, 0.99999);
    EXPECT_GE(lr, 0.0999999);
    EXPECT_LE(lr, 0.1);
  }
  EXPECT_GT(longer, 0);
}

// The size of a submission: the fold-run limit in its own terms below kMaxTrials, the trial limit
// in its terms above it (never a capped count of fold runs), and an invalid combination naming
// the trial's values.
TEST(SearcherTest, ExperimentSizeAndCombinationsAreCheckedWithTheirNumbers) {
  auto runs = CheckExperimentSize(Spec(
      "cv: {folds: 100}\nsearch: {algorithm: grid, space: {train.epochs: {int_uniform: [1, "
      "2000]}}}\n"));
  EXPECT_THAT(runs.status().message(),
              ::testing::HasSubstr("2000 trials x 100 folds is over 100000 fold runs"));
  auto trials = CheckExperimentSize(Spec(
      "search: {algorithm: grid, space: {train.max_iterations: {int_uniform: [0, 2147483647]}, "
      "train.log_every: {int_uniform: [1, 2147483647]}}}\n"));
  EXPECT_THAT(trials.status().message(),
              ::testing::HasSubstr("search.space: the grid has over 10^15 trials, over the limit"));
  auto combination = CheckExperimentSize(Spec(
      "method: mal\nsearch: {algorithm: grid, space: {mal.lookahead_steps: {choice: ['1', '4']}, "
      "mal.exact_method: {choice: [jvp, vjp]}}}\n"));
  EXPECT_THAT(combination.status().message(),
              ::testing::HasSubstr("trial 3 (mal.exact_method=vjp, mal.lookahead_steps=4): "
                                   "mal.lookahead_steps: more than 1 step"));
  EXPECT_TRUE(CheckExperimentSize(Spec("cv: {only: [1]}\n")).ok());
}

TEST(SearcherTest, FoldNumbersFollowTheProtocol) {
  EXPECT_EQ(FoldNumbers(Spec("")), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(FoldNumbers(Spec("cv: {folds: 5}\n")).size(), 5u);
  EXPECT_EQ(FoldNumbers(Spec("cv: {only: [2]}\n")), (std::vector<int>{2}));
}

TEST(SearcherTest, ParamsRoundTripAsJson) {
  std::map<std::string, std::string> p{{"train.lr", "0.001"}, {"mal.mode", "exact"}};
  auto back = ParamsFromJson(ParamsToJson(p));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, p);
  EXPECT_FALSE(ParamsFromJson("{not json").ok());
}

}  // namespace
}  // namespace mal::server
