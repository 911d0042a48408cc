#include "server/core/experiment.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace mal::server {

const char* TrialStateName(TrialState state) {
  switch (state) {
    case TrialState::kOpen:
      return "";
    case TrialState::kSucceeded:
      return "SUCCEEDED";
    case TrialState::kFailed:
      return "FAILED";
    case TrialState::kStopped:
      return "STOPPED";
    case TrialState::kCancelled:
      return "CANCELLED";
  }
  return "";
}

absl::StatusOr<TrialState> ParseTrialState(absl::string_view text) {
  for (TrialState s : {TrialState::kOpen, TrialState::kSucceeded, TrialState::kFailed,
                       TrialState::kStopped, TrialState::kCancelled}) {
    if (text == TrialStateName(s)) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat("trial state '", text,
                                                 "' is not one of SUCCEEDED, FAILED, ",
                                                 "STOPPED, CANCELLED or empty (open)"));
}

const char* ExperimentStateName(int s) {
  switch (s) {
    case v1::EXPERIMENT_RUNNING:
      return "RUNNING";
    case v1::EXPERIMENT_SUCCEEDED:
      return "SUCCEEDED";
    case v1::EXPERIMENT_FAILED:
      return "FAILED";
    case v1::EXPERIMENT_CANCELLED:
      return "CANCELLED";
  }
  return "UNKNOWN";
}

const char* EventKind(const v1::Event& e) {
  switch (e.body_case()) {
    case v1::Event::kState:
      return "state";
    case v1::Event::kPoint:
      return "point";
    case v1::Event::kWeights:
      return "weights";
    case v1::Event::kEpoch:
      return "epoch";
    case v1::Event::kFoldResult:
      return "fold_result";
    case v1::Event::kTrialResult:
      return "trial_result";
    case v1::Event::kEnd:
      return "end";
    case v1::Event::kOutcome:
      return "outcome";
    case v1::Event::kProgress:
      return "progress";
    case v1::Event::kRestart:
      return "restart";
    case v1::Event::BODY_NOT_SET:
      return "";
  }
  return "";
}

Trial* Experiment::FindTrial(int trial) {
  for (Trial& t : trials) {
    if (t.trial == trial) return &t;
  }
  return nullptr;
}

const Trial* Experiment::FindTrial(int trial) const {
  return const_cast<Experiment*>(this)->FindTrial(trial);
}

const FoldRun* Experiment::FinalRun() const {
  for (const auto& [id, r] : runs) {
    if (r.fold == 0) return &r;
  }
  return nullptr;
}

int64_t ExperimentNumber(absl::string_view id) {
  int64_t n = 0;
  if (!absl::ConsumePrefix(&id, "exp-") || !absl::SimpleAtoi(id, &n) || n <= 0) return 0;
  return n;
}

}  // namespace mal::server
