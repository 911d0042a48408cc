#include "server/core/lifecycle.h"

#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace mal::server {

v1::TrialResult TrialResultHead(const Trial& t) {
  v1::TrialResult out;
  out.set_trial(t.trial);
  for (const auto& [k, v] : t.params) (*out.mutable_params())[k] = v;
  out.set_state(TrialStateName(t.state));
  out.set_message(t.message);
  return out;
}

std::map<int, std::vector<const FoldRun*>> FoldRunsByTrial(const Experiment& e) {
  std::map<int, std::vector<const FoldRun*>> out;
  for (const auto& [id, r] : e.runs) {
    if (r.fold != 0) out[r.trial].push_back(&r);
  }
  return out;
}

const std::vector<const FoldRun*>& RunsOf(const std::map<int, std::vector<const FoldRun*>>& runs,
                                          int trial) {
  static const std::vector<const FoldRun*> kNone;
  auto it = runs.find(trial);
  return it == runs.end() ? kNone : it->second;
}

namespace {

// `out` (a trial's head) with the mean and std over the succeeded ones of `folds` (fold runs; an
// unreadable result is skipped, as a fold without one).
v1::TrialResult WithFoldResults(v1::TrialResult out, const std::vector<const FoldRun*>& folds) {
  std::vector<v1::FoldResult> results;
  for (const FoldRun* r : folds) {
    if (r->fold == 0 || r->state != RunState::kSucceeded) continue;
    v1::FoldResult fr;
    if (fr.ParseFromString(r->result)) results.push_back(std::move(fr));
  }
  if (results.empty()) return out;
  *out.mutable_aus() = results[0].aus();
  const double n = static_cast<double>(results.size());
  auto mean_std = [&](auto value) {
    double sum = 0, sq = 0;
    for (const auto& r : results) sum += value(r);
    const double mean = sum / n;
    for (const auto& r : results) sq += (value(r) - mean) * (value(r) - mean);
    return std::make_pair(mean, std::sqrt(sq / n));
  };
  for (int a = 0; a < results[0].test_f1_size(); ++a) {
    auto [m, s] = mean_std(
        [a](const v1::FoldResult& r) { return a < r.test_f1_size() ? r.test_f1(a) : 0.0; });
    out.add_au_mean_f1(m);
    out.add_au_std_f1(s);
  }
  auto [m, s] = mean_std([](const v1::FoldResult& r) { return r.test_mean_f1(); });
  out.set_mean_f1(m);
  out.set_std_f1(s);
  return out;
}

}  // namespace

v1::TrialResult AggregateTrial(const Trial& t, const std::vector<const FoldRun*>& folds) {
  return WithFoldResults(TrialResultHead(t), folds);
}

v1::TrialResult AggregateTrial(const Experiment& e, int trial) {
  v1::TrialResult head;
  head.set_trial(trial);
  if (const Trial* t = e.FindTrial(trial)) head = TrialResultHead(*t);
  std::vector<const FoldRun*> folds;
  for (const auto& [id, r] : e.runs) {
    if (r.trial == trial) folds.push_back(&r);
  }
  return WithFoldResults(std::move(head), folds);
}

std::vector<v1::TrialResult> AggregateTrials(const Experiment& e) {
  const auto runs = FoldRunsByTrial(e);
  std::vector<v1::TrialResult> out;
  out.reserve(e.trials.size());
  for (const Trial& t : e.trials) out.push_back(AggregateTrial(t, RunsOf(runs, t.trial)));
  return out;
}

int BestTrial(const Experiment& e, double* best_f1) {
  const auto runs = FoldRunsByTrial(e);
  int best = -1;
  double f1_best = -1;
  for (const Trial& t : e.trials) {
    if (t.state != TrialState::kSucceeded) continue;
    const double f1 = AggregateTrial(t, RunsOf(runs, t.trial)).mean_f1();
    if (f1 > f1_best) {
      f1_best = f1;
      best = t.trial;
    }
  }
  if (best_f1 != nullptr) *best_f1 = f1_best;
  return best;
}

std::optional<TrialSettlement> SettleTrial(const Trial& t,
                                           const std::vector<const FoldRun*>& runs) {
  if (t.state != TrialState::kOpen) return std::nullopt;
  const FoldRun* failed = nullptr;
  const FoldRun* cancelled = nullptr;
  bool all_succeeded = true, all_finished = true;
  for (const FoldRun* r : runs) {
    if (r->fold == 0) continue;
    if (r->state == RunState::kFailed && failed == nullptr) failed = r;
    if (r->state == RunState::kCancelled && cancelled == nullptr) cancelled = r;
    all_succeeded = all_succeeded && r->state == RunState::kSucceeded;
    all_finished = all_finished && IsFinished(r->state);
  }
  if (failed != nullptr)
    return TrialSettlement{TrialState::kFailed,
                           absl::StrCat("fold ", failed->fold, ": ", failed->message)};
  if (all_succeeded) return TrialSettlement{TrialState::kSucceeded, ""};
  if (all_finished && cancelled != nullptr)
    return TrialSettlement{TrialState::kStopped, cancelled->message};
  return std::nullopt;
}

std::optional<TrialSettlement> SettleTrial(const Experiment& e, int trial) {
  const Trial* t = e.FindTrial(trial);
  if (t == nullptr) return std::nullopt;
  std::vector<const FoldRun*> runs;
  for (const auto& [id, r] : e.runs) {
    if (r.trial == trial) runs.push_back(&r);
  }
  return SettleTrial(*t, runs);
}

NextStep AfterTrials(const Experiment& e) {
  bool cancelled = false;
  for (const Trial& t : e.trials) {
    if (t.state == TrialState::kOpen) return NextStep::kWait;
    cancelled = cancelled || t.state == TrialState::kCancelled;
  }
  // Cancelled by the user (only that cancels a trial): no final fit, even when a trial succeeded
  // and the end is settled again after a crash or a failed write.
  if (cancelled) return NextStep::kFinish;
  if (e.spec.final_fit() && BestTrial(e) >= 0) {
    const FoldRun* final_run = e.FinalRun();
    if (final_run == nullptr) return NextStep::kAddFinalFit;
    if (!IsFinished(final_run->state)) return NextStep::kWait;
  }
  return NextStep::kFinish;
}

Outcome DecideOutcome(const Experiment& e) {
  Outcome out;
  double best_f1 = -1;
  const int best = BestTrial(e, &best_f1);
  out.best_trial = best;
  out.best_mean_f1 = best >= 0 ? best_f1 : 0;
  std::string first_failure;
  int failed = 0;
  bool cancelled = false;
  for (const Trial& t : e.trials) {
    if (t.state == TrialState::kFailed && first_failure.empty()) {
      first_failure = absl::StrCat("trial ", t.trial, ": ", t.message);
    }
    failed += t.state == TrialState::kFailed;
    cancelled = cancelled || t.state == TrialState::kCancelled;
  }
  const FoldRun* final_run = e.FinalRun();
  // Cancelled during the final fit: every trial had settled, only the final run was cancelled.
  if (cancelled || (final_run != nullptr && final_run->state == RunState::kCancelled)) {
    out.state = v1::EXPERIMENT_CANCELLED;
    out.message = kCancelledByUser;
  } else if (final_run != nullptr && final_run->state != RunState::kSucceeded) {
    out.state = v1::EXPERIMENT_FAILED;
    out.message = absl::StrCat(
        "final fit of trial ", final_run->trial, ": ",
        final_run->message.empty() ? RunStateName(final_run->state) : final_run->message);
  } else if (best >= 0) {
    out.state = v1::EXPERIMENT_SUCCEEDED;
    // Succeeded with failed trials (a search where some settings fail): say how many, so the
    // first failure does not read as the experiment's.
    if (failed > 0) {
      out.message =
          absl::StrCat(failed, " of ", e.trials.size(), " trials failed (the best of the ",
                       "others is trial ", best, "); the first: ", first_failure);
    }
    for (const auto& [id, r] : e.runs) {
      if (r.trial != best || r.state != RunState::kSucceeded || r.fold == 0) continue;
      v1::FoldResult fr;
      fr.ParseFromString(r.result);
      out.models.emplace_back(&r, fr.test_mean_f1());
    }
    if (final_run != nullptr) out.models.emplace_back(final_run, best_f1);
  } else {
    out.state = v1::EXPERIMENT_FAILED;
    out.message = first_failure.empty() ? "no trial finished" : first_failure;
  }
  return out;
}

}  // namespace mal::server
