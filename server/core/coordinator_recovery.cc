// Coordinator start: the in-memory view rebuilt from the state store, and what a crash
// interrupted finished (coordinator.h, "Durability").

#include <map>

#include "absl/strings/str_cat.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "server/core/coordinator.h"
#include "server/core/lifecycle.h"
#include "server/core/searcher.h"

namespace mal::server {

absl::StatusOr<Trial> Coordinator::LoadTrial(const Experiment& e, const TrialRow& row) {
  Trial trial;
  trial.trial = row.trial;
  trial.seed = row.seed;
  trial.message = row.message;
  auto state = ParseTrialState(row.state);
  if (!state.ok()) {
    return absl::DataLossError(absl::StrCat("experiment ", e.row.id, " trial ", row.trial, ": ",
                                            state.status().message(), " in the state store"));
  }
  trial.state = *state;
  ASSIGN_OR_RETURN(trial.params, ParamsFromJson(row.params));
  ASSIGN_OR_RETURN(trial.spec, TrialSpec(e.spec, TrialPlan{trial.trial, trial.params, trial.seed}));
  return trial;
}

absl::Status Coordinator::Load() {
  absl::MutexLock lock(&mu_);
  started_ms_ = clock_->NowMs();
  last_tick_ms_ = started_ms_;  // a start slower than a lease is the coordinator's absence too
  ASSIGN_OR_RETURN(std::vector<ExperimentRow> rows, store_->Experiments());
  for (ExperimentRow& row : rows) {
    Experiment& e = experiments_[row.id];
    e.row = std::move(row);
    if (!e.spec.ParseFromString(e.row.spec)) {
      return absl::DataLossError(
          absl::StrCat("experiment ", e.row.id, ": unreadable spec in the state store"));
    }
    ASSIGN_OR_RETURN(std::vector<TrialRow> trials, store_->Trials(e.row.id));
    if (trials.empty()) {  // written by schema 1: the plans are a pure function of the spec
      ASSIGN_OR_RETURN(std::vector<TrialPlan> plans, ExpandTrials(e.spec));
      for (const TrialPlan& p : plans)
        trials.push_back(TrialRow{p.trial, ParamsToJson(p.params), p.seed, "", ""});
    }
    for (const TrialRow& t : trials) {
      ASSIGN_OR_RETURN(Trial trial, LoadTrial(e, t));
      e.trials.push_back(std::move(trial));
    }
    RETURN_IF_ERROR(LoadRuns(e));
    for (const auto& [id, r] : e.runs) {
      if (IsHeld(r.state) && !workers_.count(r.worker)) {
        // Its worker may still be running it: it has one lease to re-register and claim it.
        Worker& w = workers_[r.worker];
        w.info.set_name(r.worker);
        w.last_ms = started_ms_;
        w.registered = false;
      }
    }
  }
  for (auto& [id, e] : experiments_) {
    if (e.row.state == v1::EXPERIMENT_RUNNING) RETURN_IF_ERROR(Recover(e));
  }
  // Artifacts of experiments deleted just before a crash.
  ASSIGN_OR_RETURN(std::vector<std::string> deleted, store_->DeletedExperiments());
  for (const std::string& id : deleted) {
    auto removed = artifacts_->RemoveExperiment(id);
    if (!removed.ok()) LOG(WARNING) << "deleted experiment " << id << ": " << removed.status();
  }
  return absl::OkStatus();
}

absl::Status Coordinator::LoadRuns(Experiment& e) {
  ASSIGN_OR_RETURN(std::vector<FoldRun> runs, store_->Runs(e.row.id));
  for (FoldRun& r : runs) {
    run_experiment_[r.id] = e.row.id;
    e.runs[r.id] = std::move(r);
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Recover(Experiment& e) {
  // What the event log says went out: trial results, the last epoch of each run (and the
  // early-stopping rungs), and whether the End event was published.
  std::map<int, v1::TrialResult> published;  // the last trial_result of each trial
  bool end_published = false;
  for (int64_t from = 1;;) {
    ASSIGN_OR_RETURN(std::vector<Event> page, store_->ReadEvents(e.row.id, from, 1000));
    if (page.empty()) break;
    for (const Event& ev : page) {
      v1::Event parsed;
      if (ev.kind == "trial_result" && parsed.ParseFromString(ev.payload)) {
        published[parsed.trial_result().trial()] = parsed.trial_result();
      }
      if (ev.kind == "epoch" && parsed.ParseFromString(ev.payload)) {
        e.last_epoch[parsed.run_id()] = parsed.epoch().epoch();
        if (e.spec.search().early_stopping()) {
          e.rungs[{parsed.fold(), parsed.epoch().epoch()}][parsed.trial()] =
              parsed.epoch().val_mean_f1();
        }
      }
      if (ev.kind == "restart" && parsed.ParseFromString(ev.payload)) {
        e.last_epoch[parsed.run_id()] = 0;  // halved batches: epochs count from 1 again
      }
      end_published = end_published || ev.kind == "end";
    }
    from = page.back().seq + 1;
  }
  for (Trial& t : e.trials) {
    auto result = published.find(t.trial);
    if (t.state != TrialState::kOpen || result == published.end()) continue;
    // Its trial_result went out; only the state write was lost (a log written before the two
    // were one transaction, SetTrialState): the state and message it announced.
    absl::StatusOr<TrialState> announced = ParseTrialState(result->second.state());
    if (!announced.ok() || *announced == TrialState::kOpen) {
      LOG(WARNING) << e.row.id << " trial " << t.trial
                   << ": its trial_result in the log has state '" << result->second.state()
                   << "'; settled from its runs instead";
      continue;
    }
    t.state = *announced;
    t.message = result->second.message();
    RETURN_IF_ERROR(store_->SetTrialState(e.row.id, t.trial, TrialStateName(t.state), t.message));
  }
  if (end_published) {
    // The End event went out; only the state write was lost (a log written before the two were
    // one transaction, FinishExperiment). The same decision as then (a cancelled experiment
    // stays CANCELLED, a failed final fit FAILED).
    const Outcome outcome = DecideOutcome(e);
    e.row.state = outcome.state;
    e.row.message = outcome.message;
    return store_->SetExperimentState(e.row.id, e.row.state, e.row.message);
  }
  SettleAll(e);
  return absl::OkStatus();
}

}  // namespace mal::server
