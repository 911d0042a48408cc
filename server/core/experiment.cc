#include "server/core/experiment.h"

#include "absl/strings/str_cat.h"

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

}  // namespace mal::server
