#ifndef MAL_SERVER_CORE_LIFECYCLE_H_
#define MAL_SERVER_CORE_LIFECYCLE_H_

// The experiment lifecycle as pure decisions over the in-memory view: a trial's aggregate and
// whether it has settled, the best trial, what follows the last trial (the final fit or the end),
// and the state an experiment ends in with the models to register. No store, clock or locks: the
// coordinator persists and publishes what these return.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mal/v1/service.pb.h"
#include "server/core/experiment.h"

namespace mal::server {

// The trial's result over its succeeded cross-validation fold runs (the final fit, fold 0, is not
// a fold): per-AU and overall test mean F1 (in [0, 1]) with the population std over folds
// (numpy's ddof=0), its params, state name and message. No succeeded fold: params and state only.
// Walks every run: for many trials use AggregateTrials, or FoldRunsByTrial once.
v1::TrialResult AggregateTrial(const Experiment& e, int trial);
// AggregateTrial for every trial, in e.trials' order, from one pass over the runs: O(runs log
// trials), where AggregateTrial per trial is O(trials x runs), seconds under the coordinator's
// lock for a 10,000-trial search (tests/bench/lifecycle_bench.cc, docs/benchmarks.md).
std::vector<v1::TrialResult> AggregateTrials(const Experiment& e);
// The cross-validation fold runs (fold > 0, any state) of each trial that has one, in run-id
// order, from one pass over the runs. Pointers into e.runs: they stay valid while runs are
// changed or added (std::map), not once one is erased.
std::map<int, std::vector<const FoldRun*>> FoldRunsByTrial(const Experiment& e);
// The entry of `trial` in `runs` (FoldRunsByTrial), or an empty list.
const std::vector<const FoldRun*>& RunsOf(const std::map<int, std::vector<const FoldRun*>>& runs,
                                          int trial);
// AggregateTrial for `t` over `runs`, its entry in FoldRunsByTrial (empty: none).
v1::TrialResult AggregateTrial(const Trial& t, const std::vector<const FoldRun*>& runs);
// The part of AggregateTrial that needs no fold run: the trial's number, params, state name and
// message.
v1::TrialResult TrialResultHead(const Trial& t);

// The SUCCEEDED trial with the highest mean F1 over folds (the first on ties), or -1; its F1 in
// `best_f1` when given (-1 without one). One pass over the runs.
int BestTrial(const Experiment& e, double* best_f1 = nullptr);

struct TrialSettlement {
  TrialState state = TrialState::kOpen;
  std::string message;  // "fold K: <the run's message>" for FAILED
};

// Whether an open trial has settled once a fold run of it finished: FAILED as soon as any fold
// run failed (the first by run id; its other runs must then be cancelled, as the trial's metric
// is undefined without every fold), SUCCEEDED when every fold run succeeded, STOPPED (the
// message of its first cancelled run: early stopping's reason) when every fold run finished and
// some were cancelled (a trial stopped whose state could not be written, or a crash between the
// cancellations and the state write), nullopt while it must wait (or when the trial is not open).
std::optional<TrialSettlement> SettleTrial(const Experiment& e, int trial);
// The same for `t` over `runs`, its entry in FoldRunsByTrial (what a restart uses for every
// trial: one pass over the runs instead of one per trial).
std::optional<TrialSettlement> SettleTrial(const Trial& t, const std::vector<const FoldRun*>& runs);

// What follows once no trial is open (kWait while one is): with final_fit and a best trial, add
// its final fit (fold 0) and wait for it; then, or without it, finish. A cancelled experiment (a
// trial CANCELLED) finishes without a final fit.
enum class NextStep { kWait, kAddFinalFit, kFinish };
NextStep AfterTrials(const Experiment& e);

struct Outcome {
  v1::ExperimentState state = v1::EXPERIMENT_RUNNING;
  std::string message;
  int best_trial = -1;
  double best_mean_f1 = 0;  // 0 without a best trial
  // SUCCEEDED: the runs whose models to register, the best trial's fold runs by id then the final
  // fit, each with the F1 to record (the final fit has no test part: the trial's CV mean F1).
  std::vector<std::pair<const FoldRun*, double>> models;
};

// The end of an experiment whose trials have all settled: CANCELLED when the user cancelled it (a
// trial is CANCELLED only then; message "cancelled by the user"), FAILED when the final fit did not
// succeed, SUCCEEDED with a best trial (its message: the first failed trial, if any), else FAILED
// with the first failed trial or "no trial finished".
Outcome DecideOutcome(const Experiment& e);
inline constexpr char kCancelledByUser[] = "cancelled by the user";

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_LIFECYCLE_H_
