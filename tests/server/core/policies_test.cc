// The coordinator's pure policies: scheduler.h, early_stopping.h, lifecycle.h, on hand-built
// views (no store, no clock).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/core/early_stopping.h"
#include "server/core/lifecycle.h"
#include "server/core/scheduler.h"

namespace mal::server {
namespace {

using ::testing::HasSubstr;

FoldRun MakeRun(int64_t id, int trial, int fold, RunState state = RunState::kPending,
                int attempt = 0) {
  FoldRun r;
  r.id = id;
  r.trial = trial;
  r.fold = fold;
  r.state = state;
  r.attempt = attempt;
  return r;
}

Experiment MakeExperiment(const std::string& id, int trials, int folds, int priority = 0,
                          int concurrent = 1) {
  Experiment e;
  e.row.id = id;
  e.row.state = v1::EXPERIMENT_RUNNING;
  e.row.priority = priority;
  e.spec.mutable_search()->set_concurrent(concurrent);
  int64_t next = id == "b" ? 100 : 1;
  for (int t = 0; t < trials; ++t) {
    Trial trial;
    trial.trial = t;
    e.trials.push_back(trial);
    for (int f = 1; f <= folds; ++f, ++next) e.runs[next] = MakeRun(next, t, f);
  }
  return e;
}

std::string Result(double mean_f1) {
  v1::FoldResult r;
  r.set_test_mean_f1(mean_f1);
  r.add_test_f1(mean_f1);
  r.add_aus(1);
  return r.SerializeAsString();
}

TEST(SchedulerTest, StartedTrialsFirstAndAtMostConcurrentTrialsUnderWay) {
  std::map<std::string, Experiment> view{{"a", MakeExperiment("a", 3, 2, 0, /*concurrent=*/1)}};
  EXPECT_EQ(PickNextRun(view)->run_id, 1);
  view["a"].runs[1].state = RunState::kRunning;  // trial 0 under way
  EXPECT_EQ(PickNextRun(view)->run_id, 2);       // its other fold, not trial 1
  view["a"].runs[2].state = RunState::kRunning;
  EXPECT_FALSE(PickNextRun(view).has_value());  // concurrent 1: trial 1 waits
  view["a"].spec.mutable_search()->set_concurrent(2);
  EXPECT_EQ(PickNextRun(view)->run_id, 3);
}

// Equal shares go to the oldest experiment: exp-2 before exp-10, although "exp-10" < "exp-2".
TEST(SchedulerTest, TiesGoToTheOldestExperimentByNumberNotByText) {
  std::map<std::string, Experiment> view{{"exp-10", MakeExperiment("exp-10", 1, 1)},
                                         {"exp-2", MakeExperiment("exp-2", 1, 1)},
                                         {"exp-3", MakeExperiment("exp-3", 1, 1)}};
  EXPECT_EQ(PickNextRun(view)->experiment_id, "exp-2");
  view["exp-2"].row.state = v1::EXPERIMENT_SUCCEEDED;
  EXPECT_EQ(PickNextRun(view)->experiment_id, "exp-3");
}

TEST(SchedulerTest, FairShareByPriorityAndTheFinalFitAlwaysMayStart) {
  std::map<std::string, Experiment> view{{"a", MakeExperiment("a", 1, 3)},
                                         {"b", MakeExperiment("b", 1, 3, 2)}};
  view["a"].runs[1].state = RunState::kRunning;
  view["b"].runs[100].state = RunState::kRunning;
  view["b"].runs[101].state = RunState::kRunning;
  // a: 1 held / weight 1 = 1; b: 2 held / weight 3 = 0.67 -> b.
  EXPECT_EQ(PickNextRun(view)->experiment_id, "b");
  view["b"].row.state = v1::EXPERIMENT_SUCCEEDED;
  EXPECT_EQ(PickNextRun(view)->experiment_id, "a");
  Experiment& a = view["a"];
  a.trials[0].state = TrialState::kSucceeded;
  EXPECT_FALSE(PickNextRun(view).has_value());  // a settled trial's folds do not start
  a.runs[50] = MakeRun(50, 0, 0);
  EXPECT_EQ(PickNextRun(view)->run_id, 50);
  EXPECT_DOUBLE_EQ(PriorityWeight(-1), 0.5);
}

TEST(EarlyStoppingTest, StopsATrialOutsideTheTopThirdAtARung) {
  RungTable rungs;
  EXPECT_TRUE(IsRungEpoch(1) && IsRungEpoch(3) && IsRungEpoch(9) && !IsRungEpoch(2) &&
              !IsRungEpoch(0));
  EXPECT_FALSE(RecordRung(rungs, 0, 1, 1, 10, 0.6));
  EXPECT_FALSE(RecordRung(rungs, 1, 1, 1, 10, 0.5));
  auto stop = RecordRung(rungs, 2, 1, 1, 10, 0.4);  // 3 trials: keep 1; two are better
  ASSERT_TRUE(stop.has_value());
  EXPECT_THAT(*stop, HasSubstr("epoch 1 of fold 1"));
  EXPECT_THAT(*stop, HasSubstr("0.4000"));
  EXPECT_FALSE(RecordRung(rungs, 3, 1, 1, 10, 0.7));  // the best of four goes on
  EXPECT_FALSE(RecordRung(rungs, 4, 1, 2, 10, 0.0));  // not a rung
  EXPECT_FALSE(RecordRung(rungs, 5, 2, 1, 10, 0.0));  // alone on fold 2
  EXPECT_FALSE(RecordRung(rungs, 6, 1, 3, 3, 0.0));   // the last epoch is never a cut
}

TEST(LifecycleTest, AggregatesFoldsWithPopulationStdAndPicksTheBestTrial) {
  Experiment e = MakeExperiment("a", 2, 2);
  e.runs[1].state = e.runs[2].state = e.runs[3].state = e.runs[4].state = RunState::kSucceeded;
  e.runs[1].result = Result(0.4);
  e.runs[2].result = Result(0.6);
  e.runs[3].result = Result(0.7);
  e.runs[4].result = Result(0.7);
  const v1::TrialResult r = AggregateTrial(e, 0);
  EXPECT_DOUBLE_EQ(r.mean_f1(), 0.5);
  EXPECT_NEAR(r.std_f1(), 0.1, 1e-12);  // ddof = 0
  EXPECT_EQ(BestTrial(e), -1);          // no trial settled yet
  ASSERT_TRUE(SettleTrial(e, 0).has_value());
  EXPECT_EQ(SettleTrial(e, 0)->state, TrialState::kSucceeded);
  e.trials[0].state = e.trials[1].state = TrialState::kSucceeded;
  double f1 = 0;
  EXPECT_EQ(BestTrial(e, &f1), 1);
  EXPECT_DOUBLE_EQ(f1, 0.7);
  const Outcome o = DecideOutcome(e);
  EXPECT_EQ(o.state, v1::EXPERIMENT_SUCCEEDED);
  ASSERT_EQ(o.models.size(), 2u);  // trial 1's fold runs
  EXPECT_EQ(o.models[0].first->id, 3);
}

// A trial whose runs were cancelled (early stopping) and whose STOPPED state was never written
// (a crash between the two, or a full disk) settles as STOPPED with the stop's reason; it used to
// wait for ever, and its experiment with it.
TEST(LifecycleTest, ATrialWhoseFoldsEndedCancelledSettlesAsStopped) {
  Experiment e = MakeExperiment("a", 1, 3);
  e.runs[1].state = RunState::kSucceeded;
  e.runs[1].result = Result(0.4);
  e.runs[2].state = RunState::kCancelled;
  e.runs[2].message = "stopped early at epoch 1 of fold 2";
  EXPECT_FALSE(SettleTrial(e, 0).has_value());  // fold 3 still running
  e.runs[3].state = RunState::kCancelled;
  e.runs[3].message = "stopped early at epoch 1 of fold 2";
  ASSERT_TRUE(SettleTrial(e, 0).has_value());
  EXPECT_EQ(SettleTrial(e, 0)->state, TrialState::kStopped);
  EXPECT_EQ(SettleTrial(e, 0)->message, "stopped early at epoch 1 of fold 2");
  e.runs[3].state = RunState::kFailed;  // a failure still wins
  EXPECT_EQ(SettleTrial(e, 0)->state, TrialState::kFailed);
}

// A cancelled search with a succeeded trial is settled again (its end could not be written):
// it finishes, CANCELLED, without starting the final fit it asked for.
TEST(LifecycleTest, ACancelledExperimentFinishesWithoutItsFinalFit) {
  Experiment e = MakeExperiment("a", 2, 1);
  e.spec.set_final_fit(true);
  e.runs[1].state = RunState::kSucceeded;
  e.runs[1].result = Result(0.6);
  e.trials[0].state = TrialState::kSucceeded;
  EXPECT_EQ(AfterTrials(e), NextStep::kWait);
  e.trials[1].state = TrialState::kStopped;
  EXPECT_EQ(AfterTrials(e), NextStep::kAddFinalFit);
  e.trials[1].state = TrialState::kCancelled;
  e.runs[2].state = RunState::kCancelled;
  EXPECT_EQ(AfterTrials(e), NextStep::kFinish);
  EXPECT_EQ(DecideOutcome(e).state, v1::EXPERIMENT_CANCELLED);
}

TEST(LifecycleTest, AFailedFoldFailsItsTrialAndTheFinalFitDecidesTheEnd) {
  Experiment e = MakeExperiment("a", 1, 2);
  EXPECT_FALSE(SettleTrial(e, 0).has_value());  // still running
  e.runs[1].state = RunState::kFailed;
  e.runs[1].message = "out of memory";
  ASSERT_TRUE(SettleTrial(e, 0).has_value());
  EXPECT_EQ(SettleTrial(e, 0)->state, TrialState::kFailed);
  EXPECT_EQ(SettleTrial(e, 0)->message, "fold 1: out of memory");
  e.trials[0].message = SettleTrial(e, 0)->message;
  e.trials[0].state = TrialState::kFailed;
  EXPECT_FALSE(SettleTrial(e, 0).has_value());  // settled once
  EXPECT_EQ(AfterTrials(e), NextStep::kFinish);
  EXPECT_EQ(DecideOutcome(e).state, v1::EXPERIMENT_FAILED);
  EXPECT_THAT(DecideOutcome(e).message, HasSubstr("trial 0: fold 1: out of memory"));
  {
    // A search where one of two trials failed still succeeds, and says how many failed.
    Experiment g = MakeExperiment("a", 2, 1);
    g.runs[1].state = RunState::kFailed;
    g.runs[1].message = "out of memory";
    g.trials[0].state = TrialState::kFailed;
    g.trials[0].message = "fold 1: out of memory";
    g.runs[2].state = RunState::kSucceeded;
    g.runs[2].result = Result(0.6);
    g.trials[1].state = TrialState::kSucceeded;
    const Outcome o = DecideOutcome(g);
    EXPECT_EQ(o.state, v1::EXPERIMENT_SUCCEEDED);
    EXPECT_EQ(o.message,
              "1 of 2 trials failed (the best of the others is trial 1); the first: trial 0: fold "
              "1: out of memory");
  }

  Experiment f = MakeExperiment("a", 1, 1);
  f.spec.set_final_fit(true);
  f.runs[1].state = RunState::kSucceeded;
  f.runs[1].result = Result(0.5);
  f.trials[0].state = TrialState::kSucceeded;
  EXPECT_EQ(AfterTrials(f), NextStep::kAddFinalFit);
  f.runs[9] = MakeRun(9, 0, 0, RunState::kRunning);
  EXPECT_EQ(AfterTrials(f), NextStep::kWait);
  f.runs[9].state = RunState::kFailed;
  EXPECT_EQ(AfterTrials(f), NextStep::kFinish);
  EXPECT_EQ(DecideOutcome(f).state, v1::EXPERIMENT_FAILED);
  f.runs[9].state = RunState::kSucceeded;
  const Outcome o = DecideOutcome(f);
  EXPECT_EQ(o.state, v1::EXPERIMENT_SUCCEEDED);
  ASSERT_EQ(o.models.size(), 2u);
  EXPECT_EQ(o.models[1].first->fold, 0);
  EXPECT_DOUBLE_EQ(o.models[1].second, 0.5);  // the final fit carries the trial's CV F1
}

// The grouped forms a restart, Results and an experiment's end use (one pass over the runs)
// answer as the per-trial forms do, trial by trial, on a search with every kind of trial: the
// final fit (fold 0) and unfinished or failed folds count in neither.
TEST(LifecycleTest, TheOnePassFormsAnswerAsThePerTrialForms) {
  Experiment e = MakeExperiment("a", 5, 3);
  e.spec.set_final_fit(true);
  // Trial 0: all folds succeeded; 1: one failed; 2: one cancelled, the rest succeeded; 3: one
  // still running; 4: nothing began. Fold results differ per fold so means and stds differ.
  for (int64_t id = 1; id <= 9; ++id) {
    e.runs[id].state = RunState::kSucceeded;
    e.runs[id].result = Result(0.1 * static_cast<double>(id % 7) + 0.05);
  }
  e.runs[5].state = RunState::kFailed;
  e.runs[5].message = "out of memory";
  e.runs[8].state = RunState::kCancelled;
  e.runs[8].message = "stopped early at epoch 2 of fold 2";
  e.runs[11].state = RunState::kRunning;
  e.runs[10].state = RunState::kSucceeded;
  e.runs[10].result = Result(0.9);
  e.runs[99] = MakeRun(99, 0, 0, RunState::kSucceeded);  // trial 0's final fit: not a fold
  e.runs[99].result = Result(0.99);
  e.trials[0].state = TrialState::kSucceeded;

  const auto runs = FoldRunsByTrial(e);
  EXPECT_EQ(RunsOf(runs, 0).size(), 3u);  // fold 0 left out
  EXPECT_TRUE(RunsOf(runs, 7).empty());
  const std::vector<v1::TrialResult> all = AggregateTrials(e);
  ASSERT_EQ(all.size(), e.trials.size());
  for (const Trial& t : e.trials) {
    SCOPED_TRACE(t.trial);
    const v1::TrialResult one = AggregateTrial(e, t.trial);
    EXPECT_EQ(all[t.trial].SerializeAsString(), one.SerializeAsString());
    EXPECT_EQ(AggregateTrial(t, RunsOf(runs, t.trial)).SerializeAsString(),
              one.SerializeAsString());
    const auto grouped = SettleTrial(t, RunsOf(runs, t.trial));
    const auto single = SettleTrial(e, t.trial);
    ASSERT_EQ(grouped.has_value(), single.has_value());
    if (grouped) {
      EXPECT_EQ(grouped->state, single->state);
      EXPECT_EQ(grouped->message, single->message);
    }
  }
  EXPECT_DOUBLE_EQ(all[0].mean_f1(), (0.15 + 0.25 + 0.35) / 3);  // not the final fit's 0.99
  EXPECT_DOUBLE_EQ(all[3].mean_f1(), 0.9);                       // the one finished fold
  EXPECT_EQ(all[4].mean_f1(), 0);
  EXPECT_FALSE(SettleTrial(e, 0).has_value());  // settled already
  EXPECT_EQ(SettleTrial(e, 1)->state, TrialState::kFailed);
  EXPECT_EQ(SettleTrial(e, 1)->message, "fold 2: out of memory");
  EXPECT_EQ(SettleTrial(e, 2)->state, TrialState::kStopped);  // a stopped fold, the rest done
  EXPECT_FALSE(SettleTrial(e, 3).has_value());                // fold 2 running
  e.trials[2].state = TrialState::kSucceeded;  // BestTrial reads SUCCEEDED trials only
  double f1 = 0;
  EXPECT_EQ(BestTrial(e, &f1), 0);
  EXPECT_DOUBLE_EQ(f1, all[0].mean_f1());
}

TEST(LifecycleTest, TrialStatesRoundTripByName) {
  for (TrialState s : {TrialState::kOpen, TrialState::kSucceeded, TrialState::kFailed,
                       TrialState::kStopped, TrialState::kCancelled}) {
    EXPECT_EQ(*ParseTrialState(TrialStateName(s)), s);
  }
  EXPECT_THAT(std::string(ParseTrialState("DONE").status().message()), HasSubstr("'DONE'"));
}

}  // namespace
}  // namespace mal::server
