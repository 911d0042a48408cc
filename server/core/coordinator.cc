#include "server/core/coordinator.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/spec/spec.h"
#include "common/spec/spec_paths.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/core/lifecycle.h"
#include "server/core/model_registry.h"
#include "server/core/scheduler.h"
#include "server/core/searcher.h"

namespace mal::server {

namespace {

class RealClock : public Clock {
 public:
  int64_t NowMs() override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

v1::RunState ToProto(RunState s) {
  switch (s) {
    case RunState::kPending:
      return v1::RUN_PENDING;
    case RunState::kAssigned:
      return v1::RUN_ASSIGNED;
    case RunState::kRunning:
      return v1::RUN_RUNNING;
    case RunState::kSucceeded:
      return v1::RUN_SUCCEEDED;
    case RunState::kFailed:
      return v1::RUN_FAILED;
    case RunState::kCancelled:
      return v1::RUN_CANCELLED;
    case RunState::kLost:
      return v1::RUN_LOST;
  }
  return v1::RUN_STATE_UNSPECIFIED;
}

// A request id is a key, not a payload (the search's size: CheckExperimentSize).
constexpr size_t kMaxRequestId = 256;

}  // namespace

Clock* SystemClock() {
  static RealClock clock;
  return &clock;
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(StateStore* store, EventHub* hub,
                                                                 ArtifactStore* artifacts,
                                                                 Clock* clock,
                                                                 CoordinatorOptions options) {
  std::unique_ptr<Coordinator> c(new Coordinator(store, hub, artifacts, clock, std::move(options)));
  RETURN_IF_ERROR(c->Load());
  return c;
}

absl::StatusOr<Experiment*> Coordinator::Find(const std::string& id) {
  auto it = experiments_.find(id);
  if (it == experiments_.end())
    return absl::NotFoundError(absl::StrCat("experiment ", id, " not found"));
  return &it->second;
}

absl::StatusOr<FoldRun*> Coordinator::FindRun(int64_t run_id, Experiment** experiment) {
  auto it = run_experiment_.find(run_id);
  if (it == run_experiment_.end())
    return absl::NotFoundError(absl::StrCat("fold run ", run_id, " not found"));
  Experiment& e = experiments_.at(it->second);
  *experiment = &e;
  return &e.runs.at(run_id);
}

absl::StatusOr<FoldRun*> Coordinator::HeldRun(int64_t run_id, int64_t epoch, Experiment** e) {
  ASSIGN_OR_RETURN(FoldRun * run, FindRun(run_id, e));
  RETURN_IF_ERROR(CheckLeaseEpoch(*run, epoch));
  if (!IsHeld(run->state)) {
    return absl::FailedPreconditionError(
        absl::StrCat("fold run ", run_id, " is ", RunStateName(run->state)));
  }
  return run;
}

EventHub::Outgoing Coordinator::Stamp(const FoldRun* run, v1::Event event) {
  if (run != nullptr) {
    event.set_run_id(run->id);
    event.set_trial(run->trial);
    event.set_fold(run->fold);
    event.set_attempt(run->attempt);
  } else {
    event.set_trial(-1);
  }
  event.set_time_ms(clock_->NowMs());
  const std::string kind = EventKind(event);
  return EventHub::Outgoing{kind, event.SerializeAsString(), kind == "weights"};
}

void Coordinator::Emit(Experiment& e, const FoldRun* run, v1::Event event) {
  EventHub::Outgoing out = Stamp(run, std::move(event));
  auto seq = hub_->Publish(e.row.id, out.kind, out.payload, out.coalescable);
  if (!seq.ok())
    LOG(ERROR) << e.row.id << ": could not append a " << out.kind << " event: " << seq.status();
}

EventIn Coordinator::StampForStore(const FoldRun* run, v1::Event event) {
  EventHub::Outgoing out = Stamp(run, std::move(event));
  return EventIn{std::move(out.kind), std::move(out.payload)};
}

namespace {
v1::Event RunStateEvent(const FoldRun& run) {
  v1::Event ev;
  v1::StateChange* s = ev.mutable_state();
  s->set_scope("run");
  s->set_state(RunStateName(run.state));
  s->set_message(run.message);
  s->set_attempt(run.attempt);
  s->set_worker(run.worker);
  return ev;
}
}  // namespace

void Coordinator::EmitRunState(Experiment& e, const FoldRun& run) {
  Emit(e, &run, RunStateEvent(run));
}

RunEvents Coordinator::MoveEvents(std::optional<v1::Event> first) {
  RunEvents events;
  // Called by the store inside the move, while this thread holds mu_.
  events.make = [this, first = std::move(first)](const FoldRun&, const FoldRun& after)
                    ABSL_NO_THREAD_SAFETY_ANALYSIS {
                      std::vector<EventIn> out;
                      if (first) out.push_back(StampForStore(&after, *first));
                      out.push_back(StampForStore(&after, RunStateEvent(after)));
                      return out;
                    };
  return events;
}

// ------------------------------------------------------------------------------------------
// Client side.

absl::StatusOr<v1::SubmitExperimentResponse> Coordinator::Submit(
    const v1::SubmitExperimentRequest& request) {
  if (request.request_id().size() > kMaxRequestId) {
    return absl::InvalidArgumentError(absl::StrCat("request_id: ", request.request_id().size(),
                                                   " characters, at most ", kMaxRequestId));
  }
  v1::ExperimentSpec spec = request.spec();
  ApplyDefaults(spec);
  // The same validation as a YAML file gets (common/spec/spec.h), before anything is stored.
  if (absl::Status s = ValidateSpec(spec); !s.ok()) return absl::InvalidArgumentError(s.message());
  const std::vector<int> folds = FoldNumbers(spec);
  // Before the paths: a search too large is refused in microseconds, whatever else is wrong.
  ASSIGN_OR_RETURN(std::vector<TrialPlan> plans, CheckExperimentSize(spec));
  RETURN_IF_ERROR(CheckSpecPaths(spec, options_.data_roots, /*resolve_links=*/false));
  if (!options_.data_roots.empty() && plans.size() > 1) {  // a search may set a path
    for (const TrialPlan& plan : plans) {
      ASSIGN_OR_RETURN(v1::ExperimentSpec trial, TrialSpec(spec, plan));
      if (absl::Status s = CheckSpecPaths(trial, options_.data_roots, false); !s.ok())
        return absl::InvalidArgumentError(absl::StrCat("trial ", plan.trial, ": ", s.message()));
    }
  }
  ExperimentRow row;
  row.request_id = request.request_id();
  row.name = spec.name().empty() ? "experiment" : spec.name();
  row.spec = spec.SerializeAsString();
  row.state = v1::EXPERIMENT_RUNNING;
  row.priority = spec.priority();
  std::vector<TrialRow> trials;
  for (const TrialPlan& p : plans)
    trials.push_back(TrialRow{p.trial, ParamsToJson(p.params), p.seed, "", ""});

  // The submission's first event, committed with it (the state store's one transaction).
  v1::Event ev;
  ev.mutable_state()->set_scope("experiment");
  ev.mutable_state()->set_state("RUNNING");
  ev.mutable_state()->set_message(
      absl::StrCat(plans.size(), " trial(s) x ", folds.size(), " fold(s)"));
  ev.set_trial(-1);
  ev.set_time_ms(clock_->NowMs());
  const std::vector<EventIn> first_events{{EventKind(ev), ev.SerializeAsString()}};

  // The commit (and its fsync) happens outside the coordinator's lock, so reads and worker calls
  // do not wait behind it; the experiment joins the in-memory view after it, under the lock.
  // Nothing can refer to it in between: it is unknown to the view, so no Get, Watch or
  // assignment sees it until then.
  bool existing = false;
  std::vector<FoldRun> runs;
  ASSIGN_OR_RETURN(std::string id,
                   store_->CreateExperiment(row, trials, folds, &existing, &runs, first_events));
  v1::SubmitExperimentResponse out;
  out.set_experiment_id(id);
  out.set_trials(static_cast<int>(plans.size()));
  out.set_runs(static_cast<int>(plans.size() * folds.size()));
  out.set_existing(existing);
  absl::MutexLock lock(&mu_);
  if (existing) {
    // An idempotency key names one payload: the same request id with another spec is a conflict,
    // not a silent return of the first experiment (the edit would be lost). The first may not be
    // in the view yet (a concurrent retry): then its spec comes from the store.
    v1::ExperimentSpec first_spec;
    auto first = experiments_.find(id);
    if (first != experiments_.end()) {
      first_spec = first->second.spec;
    } else {
      ASSIGN_OR_RETURN(std::string bytes, store_->ExperimentSpec(id));
      if (!first_spec.ParseFromString(bytes))
        return absl::DataLossError(absl::StrCat(id, ": unreadable spec in the state store"));
    }
    std::string diff;
    google::protobuf::util::MessageDifferencer differencer;
    differencer.ReportDifferencesToString(&diff);
    if (!differencer.Compare(first_spec, spec)) {
      while (!diff.empty() && diff.back() == '\n') diff.pop_back();
      absl::StrReplaceAll({{"\n", "; "}}, &diff);
      return absl::AlreadyExistsError(absl::StrCat(
          "request id ", request.request_id(), " was used for ", id, " with a different spec (",
          diff, "); submit the changed spec under a new request id"));
    }
    return out;
  }
  Experiment& e = experiments_[id];
  row.id = id;
  row.created_ms = clock_->NowMs();
  e.row = row;
  e.spec = spec;
  for (size_t i = 0; i < plans.size(); ++i) {
    Trial t;
    t.trial = plans[i].trial;
    t.seed = plans[i].seed;
    t.params = plans[i].params;
    ASSIGN_OR_RETURN(t.spec, TrialSpec(spec, plans[i]));
    e.trials.push_back(std::move(t));
  }
  for (FoldRun& r : runs) {
    run_experiment_[r.id] = id;
    e.runs[r.id] = std::move(r);
  }
  LOG(INFO) << "submitted " << id << " (" << row.name << "): " << out.runs() << " fold runs";
  return out;
}

v1::ExperimentInfo Coordinator::Info(const Experiment& e, bool with_runs) {
  v1::ExperimentInfo info;
  info.set_id(e.row.id);
  info.set_name(e.row.name);
  info.set_state(static_cast<v1::ExperimentState>(e.row.state));
  info.set_message(e.row.message);
  info.set_priority(e.row.priority);
  info.set_created_ms(e.row.created_ms);
  info.set_request_id(e.row.request_id);
  *info.mutable_spec() = e.spec;
  int done = 0, running = 0;
  for (const auto& [id, r] : e.runs) {
    done += IsFinished(r.state);
    running += IsHeld(r.state);
    if (!with_runs) continue;
    v1::FoldRunInfo* ri = info.add_runs();
    ri->set_id(r.id);
    ri->set_trial(r.trial);
    ri->set_fold(r.fold);
    ri->set_state(ToProto(r.state));
    ri->set_attempt(r.attempt);
    ri->set_lease_epoch(r.lease_epoch);
    ri->set_worker(r.worker);
    ri->set_message(r.message);
    if (!r.result.empty()) ri->mutable_result()->ParseFromString(r.result);
    auto epoch = e.last_epoch.find(r.id);
    if (epoch != e.last_epoch.end()) {
      ri->set_epoch(epoch->second);
    } else if (ri->has_result()) {
      ri->set_epoch(ri->result().epochs());  // finished before a restart
    }
  }
  info.set_runs_total(static_cast<int>(e.runs.size()));
  info.set_runs_done(done);
  info.set_runs_running(running);
  auto last = hub_->LastSeq(e.row.id);
  if (last.ok()) info.set_last_seq(*last);
  return info;
}

absl::StatusOr<v1::ExperimentInfo> Coordinator::Get(const std::string& experiment_id,
                                                    bool with_runs) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  return Info(*e, with_runs);
}

bool Coordinator::KnownRequestId(const std::string& request_id) {
  if (request_id.empty()) return false;
  auto id = store_->ExperimentByRequestId(request_id);  // the store's lock only, not mu_
  return id.ok() && !id->empty();
}

namespace {

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
constexpr size_t kMaxPageBytes = 4 << 20;

}  // namespace

absl::StatusOr<v1::ListExperimentsResponse> Coordinator::List(
    const v1::ListExperimentsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: ", request.page_size(), " is outside 0..", kMaxPageSize));
  }
  const int page_size = request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  int64_t after = 0;
  if (!request.page_token().empty()) {
    after = ExperimentNumber(request.page_token());
    if (after == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token: '", request.page_token().substr(0, 64),
                       "' is not a token this server issued (pass next_page_token unchanged)"));
    }
  }
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<int64_t, const Experiment*>> order;
  order.reserve(experiments_.size());
  for (const auto& [id, e] : experiments_) order.emplace_back(ExperimentNumber(id), &e);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second->row.id < b.second->row.id;
  });
  v1::ListExperimentsResponse out;
  out.set_total(static_cast<int>(order.size()));
  size_t bytes = 0;
  for (const auto& [number, e] : order) {
    if (number <= after) continue;
    v1::ExperimentInfo info = Info(*e, false);
    if (!request.with_spec()) info.clear_spec();
    const size_t size = info.ByteSizeLong() + 8;  // with its field tag and length
    // Full: the page size, or 4 MiB (one experiment alone may exceed it: its spec is <= 1 MiB).
    if (out.experiments_size() == page_size ||
        (out.experiments_size() > 0 && bytes + size > kMaxPageBytes)) {
      out.set_next_page_token(out.experiments().rbegin()->id());
      break;
    }
    *out.add_experiments() = std::move(info);
    bytes += size;
  }
  return out;
}

absl::StatusOr<v1::DeleteExperimentResponse> Coordinator::Delete(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  if (e->row.state == v1::EXPERIMENT_RUNNING) {
    return absl::FailedPreconditionError(absl::StrCat("experiment ", experiment_id,
                                                      " is running; cancel it first (malctl "
                                                      "cancel ",
                                                      experiment_id, ")"));
  }
  RETURN_IF_ERROR(store_->DeleteExperiment(experiment_id).status());
  for (const auto& [run_id, r] : e->runs) run_experiment_.erase(run_id);
  experiments_.erase(experiment_id);
  hub_->Forget(experiment_id);
  v1::DeleteExperimentResponse out;
  out.set_experiment_id(experiment_id);
  // The store says it is deleted: the files follow (and are removed at start if this fails).
  auto bytes = artifacts_->RemoveExperiment(experiment_id);
  if (!bytes.ok()) {
    LOG(WARNING) << "deleting " << experiment_id << "'s artifacts: " << bytes.status()
                 << " (retried at the next start)";
  } else {
    out.set_artifact_bytes(*bytes);
  }
  return out;
}

absl::StatusOr<v1::ExperimentState> Coordinator::State(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  return static_cast<v1::ExperimentState>(e->row.state);
}

absl::StatusOr<v1::ExperimentInfo> Coordinator::Cancel(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  if (e->row.state != v1::EXPERIMENT_RUNNING) return Info(*e, true);
  // One transaction for every run, trial, the experiment's end and all their events (a search
  // may have thousands: one commit each held the coordinator for minutes, and a crash midway left
  // part of it cancelled, or the events out of the log). The end is written here, not decided
  // later from what was cancelled: a cancel after every trial settled and before the final fit
  // was added cancels nothing else, and used to be lost (the experiment then SUCCEEDED, or
  // started its final fit after the cancel). No model is registered. Every trial it cancels that
  // had begun (a run past PENDING) gets its trial_result (CANCELLED, with the folds that had
  // finished), as a trial that settles does, before the experiment's state event and End; a
  // search's trials that never began end without one (a 10,000-trial search would otherwise
  // write as many events; GetExperiment and results show them CANCELLED).
  // The End names the best trial so far (a cancel settles no trial and registers no model).
  Outcome outcome;
  outcome.best_trial = BestTrial(*e, &outcome.best_mean_f1);
  if (outcome.best_trial < 0) outcome.best_mean_f1 = 0;
  outcome.state = v1::EXPERIMENT_CANCELLED;
  outcome.message = kCancelledByUser;
  ExperimentEnd end{outcome.state, {}};
  std::set<int> begun;  // trials with a run past PENDING
  for (const auto& [id, r] : e->runs) {
    if (r.state != RunState::kPending) begun.insert(r.trial);
  }
  const auto trial_runs = FoldRunsByTrial(*e);
  for (const Trial& t : e->trials) {
    if (t.state != TrialState::kOpen || !begun.count(t.trial)) continue;
    v1::Event ev;
    v1::TrialResult& result = *ev.mutable_trial_result();
    result = AggregateTrial(t, RunsOf(trial_runs, t.trial));
    result.set_state(TrialStateName(TrialState::kCancelled));
    result.set_message(kCancelledByUser);
    end.events.push_back(StampForStore(nullptr, std::move(ev)));
  }
  for (EventIn& ev : EndEvents(outcome)) end.events.push_back(std::move(ev));
  std::vector<FoldRun> cancelled;
  RunEvents events = MoveEvents();
  if (absl::Status s = hub_->Commit(experiment_id, events,
                                    [&] {
                                      return store_->CancelExperiment(
                                          experiment_id, kCancelledByUser,
                                          TrialStateName(TrialState::kCancelled), &cancelled,
                                          &events, &end);
                                    });
      !s.ok()) {
    LOG(ERROR) << experiment_id << ": cancel refused, nothing changed: " << s;
    return absl::Status(s.code(), absl::StrCat("cancelling ", experiment_id,
                                               ": refused, nothing changed: ", s.message()));
  }
  for (FoldRun& r : cancelled) e->runs[r.id] = std::move(r);
  for (Trial& t : e->trials) {
    if (t.state != TrialState::kOpen) continue;
    t.state = TrialState::kCancelled;
    t.message = kCancelledByUser;
  }
  e->row.state = outcome.state;
  e->row.message = outcome.message;
  LOG(INFO) << e->row.id << " CANCELLED: " << e->row.message;
  return Info(*e, true);
}

absl::StatusOr<v1::ExperimentInfo> Coordinator::Wait(const std::string& experiment_id,
                                                     absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  auto done = [this, e]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return e->row.state != v1::EXPERIMENT_RUNNING || shutting_down_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return Info(*e, true);
}

absl::StatusOr<v1::ResultsResponse> Coordinator::Results(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  v1::ResultsResponse out;
  out.set_experiment_id(experiment_id);
  out.set_state(static_cast<v1::ExperimentState>(e->row.state));
  for (v1::TrialResult& t : AggregateTrials(*e)) *out.add_trials() = std::move(t);
  out.set_best_trial(BestTrial(*e));
  *out.mutable_runs() = Info(*e, true).runs();
  ASSIGN_OR_RETURN(std::vector<ModelRow> models, store_->Models(experiment_id));
  for (const ModelRow& m : models) *out.add_models() = ToModelInfo(m);
  return out;
}

namespace {

// The run (trial, fold) of `e`, or NotFound naming what exists.
absl::Status CheckRunExists(const Experiment& e, int trial, int fold) {
  for (const auto& [id, r] : e.runs) {
    if (r.trial == trial && r.fold == fold) return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat(e.row.id, " has no run of trial ", trial, " fold ", fold,
                                          " (malctl describe ", e.row.id, " lists its runs)"));
}

}  // namespace

absl::StatusOr<v1::ListArtifactsResponse> Coordinator::ListArtifacts(
    const v1::ArtifactRequest& request) {
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(Experiment * e, Find(request.experiment_id()));
    RETURN_IF_ERROR(CheckRunExists(*e, request.trial(), request.fold()));
  }
  v1::ListArtifactsResponse out;
  for (const ArtifactStore::Entry& entry :
       artifacts_->List(request.experiment_id(), request.trial(), request.fold())) {
    v1::ArtifactInfo* info = out.add_artifacts();
    info->set_name(entry.name);
    info->set_size(entry.size);
    info->set_modified_ms(entry.modified_ms);
  }
  return out;
}

absl::StatusOr<std::string> Coordinator::RunArtifactPath(const v1::ArtifactRequest& request) {
  RETURN_IF_ERROR(ArtifactStore::CheckName(request.name()));
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(Experiment * e, Find(request.experiment_id()));
    RETURN_IF_ERROR(CheckRunExists(*e, request.trial(), request.fold()));
  }
  auto path =
      artifacts_->Find(request.experiment_id(), request.trial(), request.fold(), request.name());
  if (!path.ok()) {
    return absl::NotFoundError(absl::StrCat(request.experiment_id(), " trial ", request.trial(),
                                            " fold ", request.fold(), ": no artifact ",
                                            request.name(), " (yet)"));
  }
  return path;
}

v1::ListWorkersResponse Coordinator::Workers() {
  absl::MutexLock lock(&mu_);
  v1::ListWorkersResponse out;
  for (const auto& [name, w] : workers_) {
    v1::WorkerInfo* wi = out.add_workers();
    wi->set_name(name);
    wi->set_host(w.info.host());
    wi->set_slots(w.info.slots());
    *wi->mutable_devices() = w.info.devices();
    wi->set_version(w.info.version());
    wi->set_last_heartbeat_ms(w.last_ms);
    wi->set_alive(w.alive && w.registered);
    for (const auto& [id, e] : experiments_) {
      for (const auto& [rid, r] : e.runs) {
        if (IsHeld(r.state) && r.worker == name) wi->add_runs(rid);
      }
    }
  }
  return out;
}

CoordinatorCounters Coordinator::Counters() {
  absl::MutexLock lock(&mu_);
  CoordinatorCounters c;
  for (const auto& [id, e] : experiments_) {
    ++c.experiments_by_state[e.row.state];
    for (const auto& [rid, r] : e.runs) ++c.runs_by_state[r.state];
  }
  for (const auto& [name, w] : workers_) {
    if (!w.alive || !w.registered) continue;
    ++c.workers_alive;
    c.worker_slots += w.info.slots();
  }
  c.assignments = assignments_;
  c.lease_expiries = lease_expiries_;
  c.runs_lost = runs_lost_;
  return c;
}

void Coordinator::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
}

}  // namespace mal::server
