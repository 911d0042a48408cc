// Coordinator: applying the lifecycle decisions (lifecycle.h) to the view, the store and the
// event log: trials settling or stopping early, the final fit, the experiment's end and its
// model registration.

#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/util/files.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"
#include "server/core/coordinator.h"
#include "server/core/early_stopping.h"
#include "server/core/lifecycle.h"

namespace mal::server {

absl::Status Coordinator::CancelRuns(Experiment& e, int trial, const std::string& message,
                                     const std::vector<const FoldRun*>* runs) {
  std::vector<int64_t> ids;  // the runs to cancel
  if (runs != nullptr && trial >= 0) {
    for (const FoldRun* r : *runs) {
      if (!IsFinished(r->state)) ids.push_back(r->id);
    }
  } else {
    for (const auto& [id, r] : e.runs) {
      if ((trial < 0 || r.trial == trial) && !IsFinished(r.state)) ids.push_back(id);
    }
  }
  absl::Status first;
  for (const int64_t id : ids) {
    auto found = e.runs.find(id);
    if (found == e.runs.end()) continue;
    FoldRun& r = found->second;
    FoldRun updated;
    RunEvents events = MoveEvents();
    const int64_t run_id = id;
    if (absl::Status s = hub_->Commit(
            e.row.id, events, [&] { return store_->Cancel(run_id, message, &updated, &events); });
        !s.ok()) {
      LOG(ERROR) << e.row.id << " fold run " << id << ": cancelling: " << s;
      first.Update(s);
      continue;
    }
    r = std::move(updated);
  }
  return first;
}

void Coordinator::SetTrialState(Experiment& e, Trial& t, TrialState state,
                                const std::string& message,
                                const std::vector<const FoldRun*>* runs) {
  const TrialState was = t.state;
  const std::string was_message = t.message;
  t.state = state;
  t.message = message;
  v1::Event ev;
  *ev.mutable_trial_result() =
      runs != nullptr ? AggregateTrial(t, *runs) : AggregateTrial(e, t.trial);
  // The state and its trial_result in one transaction. Should it fail (a full disk), the trial
  // stays open, so that the experiment cannot end over it, and Tick settles it again.
  StateEvents events;
  events.events.push_back(StampForStore(nullptr, std::move(ev)));
  if (absl::Status s = hub_->Commit(e.row.id, events,
                                    [&] {
                                      return store_->SetTrialState(e.row.id, t.trial,
                                                                   TrialStateName(state), message,
                                                                   &events);
                                    });
      !s.ok()) {
    LOG(ERROR) << e.row.id << " trial " << t.trial << ": " << s << " (settled again later)";
    t.state = was;
    t.message = was_message;
    unsettled_.insert(e.row.id);
  }
}

void Coordinator::Settle(Experiment& e, int trial) {
  if (Trial* t = e.FindTrial(trial)) ApplySettlement(e, *t, SettleTrial(e, trial));
  MaybeFinish(e);
}

void Coordinator::ApplySettlement(Experiment& e, Trial& t,
                                  const std::optional<TrialSettlement>& settled,
                                  const std::vector<const FoldRun*>* runs) {
  if (!settled) return;
  // The trial's metric is undefined without every fold: a failure stops the others.
  if (settled->state == TrialState::kFailed)
    CancelRuns(e, t.trial, "another fold of the trial failed", runs).IgnoreError();  // logged
  SetTrialState(e, t, settled->state, settled->message, runs);
}

void Coordinator::SettleAll(Experiment& e) {
  // One pass over the runs for every trial (SettleTrial(e, trial) walks them all: a restart of a
  // 10,000-trial search spent seconds here, tests/bench/lifecycle_bench.cc). CancelRuns and
  // SetTrialState change runs in place, so the pointers stay valid.
  const auto runs = FoldRunsByTrial(e);
  for (Trial& t : e.trials) {
    const std::vector<const FoldRun*>& of_trial = RunsOf(runs, t.trial);
    ApplySettlement(e, t, SettleTrial(t, of_trial), &of_trial);
  }
  MaybeFinish(e);
}

void Coordinator::CheckRung(Experiment& e, const FoldRun& run, const v1::EpochMetrics& epoch) {
  const Trial* t = e.FindTrial(run.trial);
  if (t == nullptr || t->state != TrialState::kOpen) return;
  std::optional<std::string> stop = RecordRung(e.rungs, run.trial, run.fold, epoch.epoch(),
                                               t->spec.train().epochs(), epoch.val_mean_f1());
  if (stop) StopTrial(e, run.trial, *stop);
}

void Coordinator::StopTrial(Experiment& e, int trial, const std::string& message) {
  CancelRuns(e, trial, message).IgnoreError();  // logged
  if (Trial* t = e.FindTrial(trial)) SetTrialState(e, *t, TrialState::kStopped, message);
  LOG(INFO) << e.row.id << " trial " << trial << ": " << message;
  MaybeFinish(e);
}

void Coordinator::MaybeFinish(Experiment& e) {
  if (e.row.state != v1::EXPERIMENT_RUNNING) return;
  switch (AfterTrials(e)) {
    case NextStep::kWait:
      return;
    case NextStep::kFinish:
      FinishExperiment(e);
      return;
    case NextStep::kAddFinalFit:
      break;
  }
  // Every trial is done: train the best one on every subject, then finish.
  const int best = BestTrial(e);
  v1::Event ev;
  ev.mutable_state()->set_scope("experiment");
  ev.mutable_state()->set_state("RUNNING");
  ev.mutable_state()->set_message(absl::StrCat("final fit of trial ", best, " on all subjects"));
  RunEvents events;  // the run and its announcement in one transaction
  events.make = [this, &ev](const FoldRun&, const FoldRun&) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return std::vector<EventIn>{StampForStore(nullptr, ev)};
  };
  FoldRun added;
  auto id = hub_->Commit(e.row.id, events,
                         [&] { return store_->AddRun(e.row.id, best, 0, &added, &events); });
  if (!id.ok()) {
    LOG(ERROR) << e.row.id << ": adding the final fit: " << id.status() << " (tried again later)";
    unsettled_.insert(e.row.id);
    return;
  }
  e.runs[*id] = std::move(added);
  run_experiment_[*id] = e.row.id;
}

absl::StatusOr<std::vector<ModelRow>> Coordinator::ModelsToRegister(const Experiment& e,
                                                                    const Outcome& outcome) {
  // Each model once: one registered before (deleted since, too) is not registered again. Since
  // 2026-12-07 models are registered in the end's own transaction; an experiment whose end a crash
  // cut between two registrations before that date (they were registered one by one, then the end
  // written) has the rest registered with its end at the start.
  ASSIGN_OR_RETURN(std::vector<ModelRow> existing,
                   store_->Models(e.row.id, /*include_deleted=*/true));
  std::set<std::pair<int, int>> registered;  // (trial, fold)
  for (const ModelRow& m : existing) registered.emplace(m.trial, m.fold);
  std::vector<ModelRow> out;
  for (const auto& [run, f1] : outcome.models) {
    if (registered.count({run->trial, run->fold})) continue;
    auto model = artifacts_->Find(e.row.id, run->trial, run->fold, run_files::kModel);
    if (!model.ok()) continue;
    ModelRow m;
    m.name = e.row.name;
    m.experiment_id = e.row.id;
    m.trial = run->trial;
    m.fold = run->fold;
    m.test_mean_f1 = f1;
    m.artifact = *model;
    auto meta = artifacts_->Find(e.row.id, run->trial, run->fold, run_files::kModelMetadata);
    if (meta.ok()) m.metadata = ReadFile(*meta).value_or("");
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<EventIn> Coordinator::EndEvents(const Outcome& outcome) {
  v1::Event change;
  change.mutable_state()->set_scope("experiment");
  change.mutable_state()->set_state(ExperimentStateName(outcome.state));
  change.mutable_state()->set_message(outcome.message);
  v1::Event end;
  end.mutable_end()->set_state(outcome.state);
  end.mutable_end()->set_message(outcome.message);
  end.mutable_end()->set_best_trial(outcome.best_trial);
  end.mutable_end()->set_best_mean_f1(outcome.best_mean_f1);
  return {StampForStore(nullptr, std::move(change)), StampForStore(nullptr, std::move(end))};
}

void Coordinator::FinishExperiment(Experiment& e) {
  const Outcome outcome = DecideOutcome(e);
  std::vector<ModelRow> models;
  if (outcome.state == v1::EXPERIMENT_SUCCEEDED) {
    auto to_register = ModelsToRegister(e, outcome);
    if (!to_register.ok()) {
      LOG(ERROR) << e.row.id << ": reading its registered models: " << to_register.status()
                 << " (ended later)";
      unsettled_.insert(e.row.id);
      return;
    }
    models = std::move(*to_register);
  }
  // The state, its change event and End, and its models, in one transaction (as a trial's,
  // SetTrialState): no model of an experiment that has not ended (a cancel after a failed end
  // write used to leave the experiment CANCELLED with its models registered).
  StateEvents events;
  events.events = EndEvents(outcome);
  if (absl::Status s = hub_->Commit(e.row.id, events,
                                    [&] {
                                      return store_->SetExperimentState(e.row.id, outcome.state,
                                                                        outcome.message, &events,
                                                                        models);
                                    });
      !s.ok()) {
    LOG(ERROR) << e.row.id << ": ending it: " << s << " (tried again later)";
    unsettled_.insert(e.row.id);
    return;
  }
  e.row.state = outcome.state;
  e.row.message = outcome.message;
  LOG(INFO) << e.row.id << " " << ExperimentStateName(e.row.state)
            << (e.row.message.empty() ? "" : ": ") << e.row.message;
}

void Coordinator::LoseRun(Experiment& e, FoldRun& run, const std::string& reason) {
  v1::Event lost;
  lost.mutable_state()->set_scope("run");
  lost.mutable_state()->set_state("LOST");
  lost.mutable_state()->set_message(reason);
  lost.mutable_state()->set_attempt(run.attempt);
  lost.mutable_state()->set_worker(run.worker);
  // LOST, stamped with the run as its holder had it, then where it goes (PENDING or FAILED).
  RunEvents events = MoveEvents();
  events.make = [this, &lost, then = std::move(events.make)](
                    const FoldRun& before, const FoldRun& after) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    std::vector<EventIn> all{StampForStore(&before, lost)};
    for (EventIn& next : then(before, after)) all.push_back(std::move(next));
    return all;
  };
  FoldRun updated;
  auto state = hub_->Commit(e.row.id, events, [&] {
    return store_->MarkLost(run.id, e.spec.max_restarts(), reason, &updated, &events);
  });
  if (!state.ok()) {
    LOG(ERROR) << "fold run " << run.id << ": " << state.status();
    return;
  }
  ++runs_lost_;
  run = std::move(updated);
  LOG(WARNING) << e.row.id << " fold run " << run.id << " LOST, now " << RunStateName(*state);
  if (*state == RunState::kFailed) Settle(e, run.trial);
}

}  // namespace mal::server
