#ifndef MAL_SERVER_CORE_EXPERIMENT_H_
#define MAL_SERVER_CORE_EXPERIMENT_H_

// The coordinator's in-memory view of one experiment (its trials, fold runs and early-stopping
// rungs) and of a worker, shared by the coordinator and the pure policies beside it (scheduler,
// early_stopping, lifecycle). Plain data: no locks, no gRPC, no store access; the coordinator
// owns every instance and mutates it under its mutex.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "mal/v1/service.pb.h"
#include "mal/v1/spec.pb.h"
#include "server/state/state_store.h"

namespace mal::server {

// A trial's state. kOpen while any of its fold runs may still run; the others are final.
// Persisted (TrialRow.state) and reported (TrialResult.state) by name: "" for kOpen, SUCCEEDED,
// FAILED, STOPPED (early stopping), CANCELLED.
enum class TrialState { kOpen, kSucceeded, kFailed, kStopped, kCancelled };
const char* TrialStateName(TrialState state);
// The inverse of TrialStateName; InvalidArgument naming `text` for anything else.
absl::StatusOr<TrialState> ParseTrialState(absl::string_view text);

// RUNNING, SUCCEEDED, FAILED, CANCELLED (the mal.v1.ExperimentState name without its prefix), or
// UNKNOWN.
const char* ExperimentStateName(int state);
// The event log's kind of an event: its body's field name (state, point, weights, epoch,
// fold_result, trial_result, end, outcome), or "" for an event without a body.
const char* EventKind(const v1::Event& event);

struct Trial {
  int trial = 0;
  int64_t seed = 0;
  TrialState state = TrialState::kOpen;
  std::string message;                        // why it failed or stopped
  std::map<std::string, std::string> params;  // field path -> value (searcher.h)
  v1::ExperimentSpec spec;                    // what its fold runs train
};

struct Experiment {
  ExperimentRow row;  // row.spec is the serialized `spec`
  v1::ExperimentSpec spec;
  std::vector<Trial> trials;
  std::map<int64_t, FoldRun> runs;    // by run id, mirrors the store
  std::map<int64_t, int> last_epoch;  // by run id: the last epoch it reported
  // Early stopping: validation mean F1 per (fold, rung epoch), per trial.
  std::map<std::pair<int, int>, std::map<int, double>> rungs;

  Trial* FindTrial(int trial);
  const Trial* FindTrial(int trial) const;
  // The final fit's run (fold 0), or nullptr until it is added.
  const FoldRun* FinalRun() const;
};

// N of "exp-N" (ids are issued in that order and never reused, so N orders experiments by age);
// 0 for anything else.
int64_t ExperimentNumber(absl::string_view id);

struct Worker {
  v1::RegisterRequest info;
  int64_t last_ms = 0;     // clock time of its last call (ms)
  bool alive = true;       // false once its lease lapsed
  bool registered = true;  // false: a placeholder for a worker known only from the store
  std::string session;     // issued by Register; worker calls must carry it
};

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_EXPERIMENT_H_
