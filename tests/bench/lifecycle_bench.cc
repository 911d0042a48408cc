// Benchmark of the coordinator's decisions over one large experiment (run on demand, never in
// ctest): an in-memory search of `--trials` trials x `--folds` succeeded fold runs, as
// `malctl results`, an experiment's end and a restart see it. Times what the coordinator computes
// under its lock: the per-trial results of the Results RPC (AggregateTrials), BestTrial,
// DecideOutcome, settling every open trial (a restart's SettleAll) and one trial (a run's
// completion), each the median of `--repeats` calls, in seconds; and, to compare in the same run,
// the per-trial forms the first two replaced (a walk over every run per trial). No process, store
// or network: only server/core/lifecycle.h.
//
//   build/tests/lifecycle_bench [--trials 10000] [--folds 3] [--repeats 3]

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/util/cli.h"
#include "server/core/lifecycle.h"

namespace {

using mal::server::Experiment;

// Seconds of the median of `repeats` calls of `f`.
double MedianSeconds(int repeats, const std::function<void()>& f) {
  std::vector<double> s;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

// A finished search: every trial SUCCEEDED with `folds` succeeded fold runs of 12 AUs each, mean F1
// spread over trials so that one is best.
Experiment MakeSearch(int trials, int folds) {
  Experiment e;
  e.row.id = "exp-1";
  int64_t id = 1;
  for (int t = 0; t < trials; ++t) {
    mal::server::Trial trial;
    trial.trial = t;
    trial.state = mal::server::TrialState::kSucceeded;
    trial.params["train.lr"] = std::to_string(1e-4 * (1 + t % 97));
    e.trials.push_back(std::move(trial));
    for (int f = 1; f <= folds; ++f) {
      mal::server::FoldRun r;
      r.id = id;
      r.experiment_id = e.row.id;
      r.trial = t;
      r.fold = f;
      r.state = mal::server::RunState::kSucceeded;
      mal::v1::FoldResult result;
      for (int a = 0; a < 12; ++a) result.add_test_f1(0.4 + 1e-5 * ((t * 7919 + a) % 10007));
      result.set_test_mean_f1(0.4 + 1e-5 * ((t * 7919) % 10007));
      r.result = result.SerializeAsString();
      e.runs[id++] = std::move(r);
    }
  }
  return e;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times the coordinator's per-experiment decisions over a large search."};
  int trials = 10000, folds = 3, repeats = 3;
  app.add_option("--trials", trials, "trials in the search")->check(CLI::Range(1, 10000));
  app.add_option("--folds", folds, "succeeded fold runs per trial")->check(CLI::Range(1, 10));
  app.add_option("--repeats", repeats, "calls of each; the median is reported")
      ->check(CLI::Range(1, 100));
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  const Experiment e = MakeSearch(trials, folds);
  int best = -1;
  mal::v1::ResultsResponse results;
  const double aggregate = MedianSeconds(repeats, [&] {
    results.clear_trials();
    for (mal::v1::TrialResult& t : mal::server::AggregateTrials(e))
      *results.add_trials() = std::move(t);
  });
  // The same per trial, one walk over the runs each (how Results computed them until 2026-12-07).
  const double per_trial = MedianSeconds(repeats, [&] {
    results.clear_trials();
    for (const mal::server::Trial& t : e.trials)
      *results.add_trials() = mal::server::AggregateTrial(e, t.trial);
  });
  const double best_s = MedianSeconds(repeats, [&] { best = mal::server::BestTrial(e); });
  const double outcome = MedianSeconds(repeats, [&] { mal::server::DecideOutcome(e); });
  // A restart during the search: the coordinator's SettleAll asks every open trial whether it
  // has settled, over one FoldRunsByTrial; a run's completion asks its own trial.
  Experiment open = e;
  for (mal::server::Trial& t : open.trials) t.state = mal::server::TrialState::kOpen;
  for (auto& [id, r] : open.runs) r.state = mal::server::RunState::kPending;
  const double settle_all = MedianSeconds(repeats, [&] {
    const auto runs = mal::server::FoldRunsByTrial(open);
    for (const mal::server::Trial& t : open.trials)
      mal::server::SettleTrial(t, mal::server::RunsOf(runs, t.trial));
  });
  const double settle_per_trial = MedianSeconds(repeats, [&] {
    for (const mal::server::Trial& t : open.trials) mal::server::SettleTrial(open, t.trial);
  });
  const double settle_one =
      MedianSeconds(repeats, [&] { mal::server::SettleTrial(open, open.trials.back().trial); });
  std::printf("%d trials x %d folds (%zu runs), median of %d, seconds:\n", trials, folds,
              e.runs.size(), repeats);
  std::printf("  Results' trials, one pass (AggregateTrials)     %10.4f\n", aggregate);
  std::printf("  Results' trials, a walk per trial (before)      %10.4f\n", per_trial);
  std::printf("  BestTrial (trial %d)                          %10.4f\n", best, best_s);
  std::printf("  DecideOutcome                                   %10.4f\n", outcome);
  std::printf("  settling every open trial, one pass (SettleAll) %10.4f\n", settle_all);
  std::printf("  settling every open trial, a walk per trial     %10.4f\n", settle_per_trial);
  std::printf("  settling one trial (a run's completion)         %10.4f\n", settle_one);
  return results.trials_size() == trials ? 0 : 1;
}
