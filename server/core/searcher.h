#ifndef MAL_SERVER_CORE_SEARCHER_H_
#define MAL_SERVER_CORE_SEARCHER_H_

// Expands an experiment into trials (hyperparameter assignments) and fold numbers. No gRPC.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mal/v1/spec.pb.h"

namespace mal::server {

struct TrialPlan {
  int trial = 0;
  std::map<std::string, std::string> params;  // field path -> value as applied
  int64_t seed = 0;
};

// Grid: every combination of the choice / int_uniform domains, keys in sorted order, the last key
// varying fastest (search.trials is ignored). Random: search.trials draws, each seeded from the
// experiment seed and the trial number, so a resubmission draws the same values. Without a search
// space: one trial. Every trial keeps the experiment's seed, so trials differ only by their
// hyperparameters (paired comparison across the same folds and initialisation).
// InvalidArgument, with the numbers, past kMaxTrials (counted arithmetically first: TrialCount).
absl::StatusOr<std::vector<TrialPlan>> ExpandTrials(const v1::ExperimentSpec& spec);

// How many trials the search makes, computed without building them (grid: the product of the
// domains' sizes, saturating at 2^50; random: search.trials; no space: 1).
int64_t TrialCount(const v1::ExperimentSpec& spec);
inline constexpr int64_t kMaxTrials = 10000;

// The spec a fold run of `plan` trains: the assignment applied, the search cleared, validated.
absl::StatusOr<v1::ExperimentSpec> TrialSpec(const v1::ExperimentSpec& spec, const TrialPlan& plan);

// The fold numbers the spec's protocol runs (cv.only when given).
std::vector<int> FoldNumbers(const v1::ExperimentSpec& spec);

// What a validated spec asks for as a whole (the coordinator's check at submission, and malctl's
// before it connects): at most kMaxRunsPerExperiment fold runs (trials x folds, counted
// arithmetically: "search, cv: 2000 trials x 100 folds is over 100000 fold runs"), and every
// trial's combination of values valid ("trial 3: mal.lookahead_steps: ..."). InvalidArgument.
inline constexpr int64_t kMaxRunsPerExperiment = 100000;
absl::StatusOr<std::vector<TrialPlan>> CheckExperimentSize(const v1::ExperimentSpec& spec);

// JSON object of string values (the params column).
std::string ParamsToJson(const std::map<std::string, std::string>& params);
absl::StatusOr<std::map<std::string, std::string>> ParamsFromJson(const std::string& json);

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_SEARCHER_H_
