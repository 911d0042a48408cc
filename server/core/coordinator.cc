#include "server/core/coordinator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/util/message_differencer.h"
#include "common/spec/spec.h"
#include "common/util/files.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
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
    case RunState::kPending: return v1::RUN_PENDING;
    case RunState::kAssigned: return v1::RUN_ASSIGNED;
    case RunState::kRunning: return v1::RUN_RUNNING;
    case RunState::kSucceeded: return v1::RUN_SUCCEEDED;
    case RunState::kFailed: return v1::RUN_FAILED;
    case RunState::kCancelled: return v1::RUN_CANCELLED;
    case RunState::kLost: return v1::RUN_LOST;
  }
  return v1::RUN_STATE_UNSPECIFIED;
}

const char* ExperimentStateName(int s) {
  switch (s) {
    case v1::EXPERIMENT_RUNNING: return "RUNNING";
    case v1::EXPERIMENT_SUCCEEDED: return "SUCCEEDED";
    case v1::EXPERIMENT_FAILED: return "FAILED";
    case v1::EXPERIMENT_CANCELLED: return "CANCELLED";
  }
  return "UNKNOWN";
}

const char* EventKind(const v1::Event& e) {
  switch (e.body_case()) {
    case v1::Event::kState: return "state";
    case v1::Event::kPoint: return "point";
    case v1::Event::kWeights: return "weights";
    case v1::Event::kEpoch: return "epoch";
    case v1::Event::kFoldResult: return "fold_result";
    case v1::Event::kTrialResult: return "trial_result";
    case v1::Event::kEnd: return "end";
    default: return "";
  }
}

// One submission may not flood the store (a typo in a grid or cv.folds).
constexpr size_t kMaxRunsPerExperiment = 100000;

// Weighted fair share: an experiment's weight grows with its priority.
double Weight(int priority) { return priority >= 0 ? 1.0 + priority : 1.0 / (1.0 - priority); }

}  // namespace

Clock* SystemClock() {
  static RealClock clock;
  return &clock;
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(StateStore* store, EventHub* hub,
                                                                 ArtifactStore* artifacts, Clock* clock,
                                                                 CoordinatorOptions options) {
  std::unique_ptr<Coordinator> c(new Coordinator(store, hub, artifacts, clock, std::move(options)));
  RETURN_IF_ERROR(c->Load());
  return c;
}

absl::Status Coordinator::Load() {
  absl::MutexLock lock(&mu_);
  started_ms_ = clock_->NowMs();
  ASSIGN_OR_RETURN(std::vector<ExperimentRow> rows, store_->Experiments());
  for (ExperimentRow& row : rows) {
    Experiment& e = experiments_[row.id];
    e.row = std::move(row);
    if (!e.spec.ParseFromString(e.row.spec)) {
      return absl::DataLossError(absl::StrCat("experiment ", e.row.id, ": unreadable spec in the state store"));
    }
    ASSIGN_OR_RETURN(std::vector<TrialRow> trials, store_->Trials(e.row.id));
    if (trials.empty()) {  // written by schema 1: the plans are a pure function of the spec
      ASSIGN_OR_RETURN(std::vector<TrialPlan> plans, ExpandTrials(e.spec));
      for (const TrialPlan& p : plans) trials.push_back(TrialRow{p.trial, ParamsToJson(p.params), p.seed, "", ""});
    }
    for (TrialRow& t : trials) {
      Trial trial;
      trial.row = std::move(t);
      ASSIGN_OR_RETURN(trial.params, ParamsFromJson(trial.row.params));
      ASSIGN_OR_RETURN(trial.spec, TrialSpec(e.spec, TrialPlan{trial.row.trial, trial.params, trial.row.seed}));
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
  // Finish what a crash interrupted: trials whose runs all ended, experiments whose trials did.
  for (auto& [id, e] : experiments_) {
    if (e.row.state != v1::EXPERIMENT_RUNNING) continue;
    std::set<int> published;
    bool end_published = false;
    for (int64_t from = 1;;) {
      ASSIGN_OR_RETURN(std::vector<Event> page, store_->ReadEvents(id, from, 1000));
      if (page.empty()) break;
      for (const Event& ev : page) {
        if (ev.kind == "trial_result") {
          v1::Event parsed;
          if (parsed.ParseFromString(ev.payload)) published.insert(parsed.trial_result().trial());
        }
        if (ev.kind == "epoch") {
          v1::Event parsed;
          if (parsed.ParseFromString(ev.payload)) {
            e.last_epoch[parsed.run_id()] = parsed.epoch().epoch();
            if (e.spec.search().early_stopping()) {
              e.rungs[{parsed.fold(), parsed.epoch().epoch()}][parsed.trial()] = parsed.epoch().val_mean_f1();
            }
          }
        }
        end_published = end_published || ev.kind == "end";
      }
      from = page.back().seq + 1;
    }
    for (Trial& t : e.trials) {
      if (t.row.state.empty() && published.count(t.row.trial)) {
        // Its trial_result went out; only the state write was lost.
        t.row.state = "SUCCEEDED";
        for (const auto& [rid, r] : e.runs) {
          if (r.trial == t.row.trial && r.state == RunState::kCancelled) t.row.state = "STOPPED";
        }
        for (const auto& [rid, r] : e.runs) {
          if (r.trial == t.row.trial && r.state == RunState::kFailed) {
            t.row.state = "FAILED";
            t.row.message = absl::StrCat("fold ", r.fold, ": ", r.message);
          }
        }
        RETURN_IF_ERROR(store_->SetTrialState(id, t.row.trial, t.row.state, t.row.message));
      }
    }
    if (end_published) {
      // The End event went out; only the state write was lost.
      bool any_succeeded = false;
      for (const Trial& t : e.trials) any_succeeded = any_succeeded || t.row.state == "SUCCEEDED";
      e.row.state = any_succeeded ? v1::EXPERIMENT_SUCCEEDED : v1::EXPERIMENT_FAILED;
      RETURN_IF_ERROR(store_->SetExperimentState(id, e.row.state, e.row.message));
      continue;
    }
    for (Trial& t : e.trials) Settle(e, t.row.trial);
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

absl::StatusOr<Coordinator::Experiment*> Coordinator::Find(const std::string& id) {
  auto it = experiments_.find(id);
  if (it == experiments_.end()) return absl::NotFoundError(absl::StrCat("experiment ", id, " not found"));
  return &it->second;
}

absl::StatusOr<FoldRun*> Coordinator::FindRun(int64_t run_id, Experiment** experiment) {
  auto it = run_experiment_.find(run_id);
  if (it == run_experiment_.end()) return absl::NotFoundError(absl::StrCat("fold run ", run_id, " not found"));
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

absl::Status Coordinator::Refresh(Experiment& e, int64_t run_id) {
  ASSIGN_OR_RETURN(FoldRun fresh, store_->Run(run_id));
  e.runs[run_id] = std::move(fresh);
  return absl::OkStatus();
}

void Coordinator::Emit(Experiment& e, const FoldRun* run, v1::Event event) {
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
  auto seq = hub_->Publish(e.row.id, kind, event.SerializeAsString(), kind == "weights");
  if (!seq.ok()) LOG(ERROR) << e.row.id << ": could not append a " << kind << " event: " << seq.status();
}

void Coordinator::EmitRunState(Experiment& e, const FoldRun& run) {
  v1::Event ev;
  v1::StateChange* s = ev.mutable_state();
  s->set_scope("run");
  s->set_state(RunStateName(run.state));
  s->set_message(run.message);
  s->set_attempt(run.attempt);
  s->set_worker(run.worker);
  Emit(e, &run, std::move(ev));
}

// ------------------------------------------------------------------------------------------
// Client side.

absl::StatusOr<v1::SubmitExperimentResponse> Coordinator::Submit(const v1::SubmitExperimentRequest& request) {
  v1::ExperimentSpec spec = request.spec();
  ApplyDefaults(spec);
  if (absl::Status s = ValidateSpec(spec); !s.ok()) return absl::InvalidArgumentError(s.message());
  ASSIGN_OR_RETURN(std::vector<TrialPlan> plans, ExpandTrials(spec));
  const std::vector<int> folds = FoldNumbers(spec);
  if (plans.size() * folds.size() > kMaxRunsPerExperiment) {
    return absl::InvalidArgumentError(absl::StrCat("search, cv: ", plans.size(), " trials x ", folds.size(),
                                                   " folds is over ", kMaxRunsPerExperiment, " fold runs"));
  }
  ExperimentRow row;
  row.request_id = request.request_id();
  row.name = spec.name().empty() ? "experiment" : spec.name();
  row.spec = spec.SerializeAsString();
  row.state = v1::EXPERIMENT_RUNNING;
  row.priority = spec.priority();
  std::vector<TrialRow> trials;
  for (const TrialPlan& p : plans) trials.push_back(TrialRow{p.trial, ParamsToJson(p.params), p.seed, "", ""});

  absl::MutexLock lock(&mu_);
  bool existing = false;
  ASSIGN_OR_RETURN(std::string id, store_->CreateExperiment(row, trials, folds, &existing));
  v1::SubmitExperimentResponse out;
  out.set_experiment_id(id);
  out.set_trials(static_cast<int>(plans.size()));
  out.set_runs(static_cast<int>(plans.size() * folds.size()));
  out.set_existing(existing);
  if (existing) {
    // An idempotency key names one payload: the same request id with another spec is a conflict,
    // not a silent return of the first experiment (the edit would be lost).
    auto first = experiments_.find(id);
    if (first != experiments_.end()) {
      std::string diff;
      google::protobuf::util::MessageDifferencer differencer;
      differencer.ReportDifferencesToString(&diff);
      if (!differencer.Compare(first->second.spec, spec)) {
        while (!diff.empty() && diff.back() == '\n') diff.pop_back();
        absl::StrReplaceAll({{"\n", "; "}}, &diff);
        return absl::AlreadyExistsError(absl::StrCat(
            "request id ", request.request_id(), " was used for ", id,
            " with a different spec (", diff, "); submit the changed spec under a new request id"));
      }
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
    t.row = trials[i];
    t.params = plans[i].params;
    ASSIGN_OR_RETURN(t.spec, TrialSpec(spec, plans[i]));
    e.trials.push_back(std::move(t));
  }
  RETURN_IF_ERROR(LoadRuns(e));
  v1::Event ev;
  ev.mutable_state()->set_scope("experiment");
  ev.mutable_state()->set_state("RUNNING");
  ev.mutable_state()->set_message(absl::StrCat(plans.size(), " trial(s) x ", folds.size(), " fold(s)"));
  Emit(e, nullptr, std::move(ev));
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

absl::StatusOr<v1::ExperimentInfo> Coordinator::Get(const std::string& experiment_id, bool with_runs) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  return Info(*e, with_runs);
}

v1::ListExperimentsResponse Coordinator::List() {
  absl::MutexLock lock(&mu_);
  v1::ListExperimentsResponse out;
  for (const auto& [id, e] : experiments_) *out.add_experiments() = Info(e, false);
  std::sort(out.mutable_experiments()->begin(), out.mutable_experiments()->end(),
            [](const v1::ExperimentInfo& a, const v1::ExperimentInfo& b) {
              return a.created_ms() != b.created_ms() ? a.created_ms() < b.created_ms() : a.id() < b.id();
            });
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
  for (auto& [id, run] : e->runs) {
    if (IsFinished(run.state)) continue;
    RETURN_IF_ERROR(store_->Cancel(id, "cancelled by the user"));
    RETURN_IF_ERROR(Refresh(*e, id));
    EmitRunState(*e, e->runs[id]);
  }
  for (Trial& t : e->trials) {
    if (!t.row.state.empty()) continue;
    t.row.state = "CANCELLED";
    RETURN_IF_ERROR(store_->SetTrialState(experiment_id, t.row.trial, t.row.state, "cancelled by the user"));
  }
  e->row.message = "cancelled by the user";
  FinishExperiment(*e);
  return Info(*e, true);
}

absl::StatusOr<v1::ExperimentInfo> Coordinator::Wait(const std::string& experiment_id, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  auto done = [this, e]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return e->row.state != v1::EXPERIMENT_RUNNING || shutting_down_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return Info(*e, true);
}

Coordinator::Trial* Coordinator::FindTrial(Experiment& e, int trial) {
  for (Trial& t : e.trials) {
    if (t.row.trial == trial) return &t;
  }
  return nullptr;
}

const Coordinator::Trial* Coordinator::FindTrial(const Experiment& e, int trial) {
  return FindTrial(const_cast<Experiment&>(e), trial);
}

const FoldRun* Coordinator::FinalRun(const Experiment& e) {
  for (const auto& [id, r] : e.runs) {
    if (r.fold == 0) return &r;
  }
  return nullptr;
}

v1::TrialResult Coordinator::Aggregate(const Experiment& e, int trial) {
  v1::TrialResult out;
  out.set_trial(trial);
  if (const Trial* t = FindTrial(e, trial)) {
    for (const auto& [k, v] : t->params) (*out.mutable_params())[k] = v;
    out.set_state(t->row.state);
    out.set_message(t->row.message);
  }
  std::vector<v1::FoldResult> results;
  for (const auto& [id, r] : e.runs) {
    if (r.trial != trial || r.fold == 0 || r.state != RunState::kSucceeded) continue;
    v1::FoldResult fr;
    if (fr.ParseFromString(r.result)) results.push_back(std::move(fr));
  }
  if (results.empty()) return out;
  *out.mutable_aus() = results[0].aus();
  const double n = static_cast<double>(results.size());
  // Population std over folds (numpy's default, ddof=0).
  auto mean_std = [&](auto value) {
    double sum = 0, sq = 0;
    for (const auto& r : results) sum += value(r);
    const double mean = sum / n;
    for (const auto& r : results) sq += (value(r) - mean) * (value(r) - mean);
    return std::make_pair(mean, std::sqrt(sq / n));
  };
  for (int a = 0; a < results[0].test_f1_size(); ++a) {
    auto [m, s] = mean_std([a](const v1::FoldResult& r) { return a < r.test_f1_size() ? r.test_f1(a) : 0.0; });
    out.add_au_mean_f1(m);
    out.add_au_std_f1(s);
  }
  auto [m, s] = mean_std([](const v1::FoldResult& r) { return r.test_mean_f1(); });
  out.set_mean_f1(m);
  out.set_std_f1(s);
  return out;
}

absl::StatusOr<v1::ResultsResponse> Coordinator::Results(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Experiment * e, Find(experiment_id));
  v1::ResultsResponse out;
  out.set_experiment_id(experiment_id);
  out.set_state(static_cast<v1::ExperimentState>(e->row.state));
  int best = -1;
  double best_f1 = -1;
  for (const Trial& t : e->trials) {
    v1::TrialResult r = Aggregate(*e, t.row.trial);
    if (t.row.state == "SUCCEEDED" && r.mean_f1() > best_f1) {
      best = t.row.trial;
      best_f1 = r.mean_f1();
    }
    *out.add_trials() = std::move(r);
  }
  out.set_best_trial(best);
  *out.mutable_runs() = Info(*e, true).runs();
  ASSIGN_OR_RETURN(std::vector<ModelRow> models, store_->Models(experiment_id));
  for (const ModelRow& m : models) {
    v1::ModelInfo* mi = out.add_models();
    mi->set_name(m.name);
    mi->set_version(m.version);
    mi->set_experiment_id(m.experiment_id);
    mi->set_trial(m.trial);
    mi->set_fold(m.fold);
    mi->set_test_mean_f1(m.test_mean_f1);
    mi->set_artifact(m.artifact);
    mi->set_metadata(m.metadata);
    mi->set_created_ms(m.created_ms);
  }
  return out;
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

// ------------------------------------------------------------------------------------------
// Trials and experiments settling.

void Coordinator::Settle(Experiment& e, int trial) {
  Trial* t = FindTrial(e, trial);
  if (t != nullptr && t->row.state.empty()) {
    const FoldRun* failed = nullptr;
    bool all_succeeded = true;
    for (const auto& [id, r] : e.runs) {
      if (r.trial != trial || r.fold == 0) continue;
      if (r.state == RunState::kFailed && failed == nullptr) failed = &r;
      all_succeeded = all_succeeded && r.state == RunState::kSucceeded;
    }
    if (failed == nullptr && !all_succeeded) return;
    std::string message;
    if (failed != nullptr) {
      message = absl::StrCat("fold ", failed->fold, ": ", failed->message);
      // The trial's metric is undefined without every fold: stop the others.
      for (auto& [id, r] : e.runs) {
        if (r.trial != trial || IsFinished(r.state)) continue;
        if (!store_->Cancel(id, "another fold of the trial failed").ok() || !Refresh(e, id).ok()) continue;
        EmitRunState(e, e.runs[id]);
      }
    }
    t->row.state = failed != nullptr ? "FAILED" : "SUCCEEDED";
    t->row.message = message;
    v1::Event ev;
    *ev.mutable_trial_result() = Aggregate(e, trial);
    Emit(e, nullptr, std::move(ev));
    if (absl::Status s = store_->SetTrialState(e.row.id, trial, t->row.state, message); !s.ok()) {
      LOG(ERROR) << e.row.id << ": " << s;
    }
  }
  MaybeFinish(e);
}

int Coordinator::BestTrial(const Experiment& e, double* best_f1) {
  int best = -1;
  double f1_best = -1;
  for (const Trial& t : e.trials) {
    if (t.row.state != "SUCCEEDED") continue;
    const double f1 = Aggregate(e, t.row.trial).mean_f1();
    if (f1 > f1_best) {
      f1_best = f1;
      best = t.row.trial;
    }
  }
  if (best_f1 != nullptr) *best_f1 = f1_best;
  return best;
}

void Coordinator::MaybeFinish(Experiment& e) {
  if (e.row.state != v1::EXPERIMENT_RUNNING) return;
  for (const Trial& t : e.trials) {
    if (t.row.state.empty()) return;
  }
  const int best = BestTrial(e, nullptr);
  if (e.spec.final_fit() && best >= 0) {
    const FoldRun* final_run = FinalRun(e);
    if (final_run == nullptr) {
      // Every trial is done: train the best one on every subject, then finish.
      auto id = store_->AddRun(e.row.id, best, 0);
      if (!id.ok() || !Refresh(e, *id).ok()) {
        LOG(ERROR) << e.row.id << ": adding the final fit: " << id.status();
        return;
      }
      run_experiment_[*id] = e.row.id;
      v1::Event ev;
      ev.mutable_state()->set_scope("experiment");
      ev.mutable_state()->set_state("RUNNING");
      ev.mutable_state()->set_message(absl::StrCat("final fit of trial ", best, " on all subjects"));
      Emit(e, nullptr, std::move(ev));
      return;
    }
    if (!IsFinished(final_run->state)) return;
  }
  FinishExperiment(e);
}

void Coordinator::FinishExperiment(Experiment& e) {
  double best_f1 = -1;
  const int best = BestTrial(e, &best_f1);
  std::string first_failure;
  bool cancelled = false;
  for (const Trial& t : e.trials) {
    if (t.row.state == "FAILED" && first_failure.empty()) {
      first_failure = absl::StrCat("trial ", t.row.trial, ": ", t.row.message);
    }
    cancelled = cancelled || t.row.state == "CANCELLED";
  }
  const FoldRun* final_run = FinalRun(e);
  int state;
  if (cancelled && e.row.message == "cancelled by the user") {
    state = v1::EXPERIMENT_CANCELLED;
  } else if (final_run != nullptr && final_run->state != RunState::kSucceeded) {
    state = v1::EXPERIMENT_FAILED;
    e.row.message = absl::StrCat("final fit of trial ", final_run->trial, ": ",
                                 final_run->message.empty() ? RunStateName(final_run->state) : final_run->message);
  } else if (best >= 0) {
    state = v1::EXPERIMENT_SUCCEEDED;
    e.row.message = first_failure;
    // Register the best trial's fold models, then the final fit's (once: a recovery may come
    // through here again).
    auto existing = store_->Models(e.row.id);
    if (existing.ok() && existing->empty()) {
      std::vector<const FoldRun*> order;
      for (const auto& [id, r] : e.runs) {
        if (r.trial == best && r.state == RunState::kSucceeded && r.fold != 0) order.push_back(&r);
      }
      if (final_run != nullptr) order.push_back(final_run);
      for (const FoldRun* r : order) {
        auto model = artifacts_->Find(e.row.id, r->trial, r->fold, "model.pt");
        if (!model.ok()) continue;
        ModelRow m;
        m.name = e.row.name;
        m.experiment_id = e.row.id;
        m.trial = r->trial;
        m.fold = r->fold;
        v1::FoldResult fr;
        fr.ParseFromString(r->result);
        // The final fit has no test part: its estimate is the trial's cross-validated F1.
        m.test_mean_f1 = r->fold == 0 ? best_f1 : fr.test_mean_f1();
        m.artifact = *model;
        auto meta = artifacts_->Find(e.row.id, r->trial, r->fold, "model.json");
        if (meta.ok()) m.metadata = ReadFile(*meta).value_or("");
        auto version = store_->RegisterModel(m);
        if (!version.ok()) LOG(ERROR) << e.row.id << ": registering a model: " << version.status();
      }
    }
  } else {
    state = v1::EXPERIMENT_FAILED;
    e.row.message = first_failure.empty() ? "no trial finished" : first_failure;
  }
  v1::Event change;
  change.mutable_state()->set_scope("experiment");
  change.mutable_state()->set_state(ExperimentStateName(state));
  change.mutable_state()->set_message(e.row.message);
  Emit(e, nullptr, std::move(change));
  v1::Event end;
  end.mutable_end()->set_state(static_cast<v1::ExperimentState>(state));
  end.mutable_end()->set_message(e.row.message);
  end.mutable_end()->set_best_trial(best);
  end.mutable_end()->set_best_mean_f1(best >= 0 ? best_f1 : 0);
  Emit(e, nullptr, std::move(end));
  e.row.state = state;
  if (absl::Status s = store_->SetExperimentState(e.row.id, state, e.row.message); !s.ok()) {
    LOG(ERROR) << e.row.id << ": " << s;
  }
  LOG(INFO) << e.row.id << " " << ExperimentStateName(state) << (e.row.message.empty() ? "" : ": ")
            << e.row.message;
}

void Coordinator::CheckRung(Experiment& e, const FoldRun& run, const v1::EpochMetrics& epoch) {
  constexpr int kEta = 3;
  int rung = 1;
  while (rung < epoch.epoch()) rung *= kEta;
  if (rung != epoch.epoch()) return;
  const Trial* t = FindTrial(e, run.trial);
  if (t == nullptr || !t->row.state.empty() || epoch.epoch() >= t->spec.train().epochs()) return;
  std::map<int, double>& seen = e.rungs[{run.fold, rung}];
  seen[run.trial] = epoch.val_mean_f1();
  const int keep = static_cast<int>(seen.size()) / kEta;
  if (keep < 1) return;
  int better = 0;
  for (const auto& [trial, f1] : seen) better += trial != run.trial && f1 > epoch.val_mean_f1();
  if (better < keep) return;
  StopTrial(e, run.trial,
            absl::StrCat("stopped early at epoch ", rung, " of fold ", run.fold, ": validation F1 ",
                         absl::StrFormat("%.4f", epoch.val_mean_f1()), " is not in the top ", keep, " of ",
                         seen.size(), " trials there"));
}

void Coordinator::StopTrial(Experiment& e, int trial, const std::string& message) {
  for (auto& [id, r] : e.runs) {
    if (r.trial != trial || IsFinished(r.state)) continue;
    if (!store_->Cancel(id, message).ok() || !Refresh(e, id).ok()) continue;
    EmitRunState(e, e.runs[id]);
  }
  if (Trial* t = FindTrial(e, trial)) {
    t->row.state = "STOPPED";
    t->row.message = message;
  }
  v1::Event ev;
  *ev.mutable_trial_result() = Aggregate(e, trial);
  Emit(e, nullptr, std::move(ev));
  if (absl::Status s = store_->SetTrialState(e.row.id, trial, "STOPPED", message); !s.ok()) {
    LOG(ERROR) << e.row.id << ": " << s;
  }
  LOG(INFO) << e.row.id << " trial " << trial << ": " << message;
  MaybeFinish(e);
}

// ------------------------------------------------------------------------------------------
// Worker side.

void Coordinator::LoseRun(Experiment& e, FoldRun& run, const std::string& reason) {
  const int max_restarts = e.spec.max_restarts();
  const int64_t id = run.id;
  v1::Event lost;
  lost.mutable_state()->set_scope("run");
  lost.mutable_state()->set_state("LOST");
  lost.mutable_state()->set_message(reason);
  lost.mutable_state()->set_attempt(run.attempt);
  lost.mutable_state()->set_worker(run.worker);
  auto state = store_->MarkLost(id, max_restarts, reason);
  if (!state.ok()) {
    LOG(ERROR) << "fold run " << id << ": " << state.status();
    return;
  }
  ++runs_lost_;
  Emit(e, &run, std::move(lost));
  if (!Refresh(e, id).ok()) return;
  EmitRunState(e, e.runs[id]);
  LOG(WARNING) << e.row.id << " fold run " << id << " LOST, now " << RunStateName(*state);
  if (*state == RunState::kFailed) Settle(e, e.runs[id].trial);
}

std::vector<v1::RunClaim> Coordinator::Reconcile(
    const std::string& worker, const google::protobuf::RepeatedPtrField<v1::RunClaim>& claims) {
  std::vector<v1::RunClaim> drop;
  std::set<int64_t> kept;
  for (const v1::RunClaim& c : claims) {
    Experiment* e = nullptr;
    auto run = FindRun(c.run_id(), &e);
    if (run.ok() && IsHeld((*run)->state) && (*run)->lease_epoch == c.lease_epoch() && (*run)->worker == worker) {
      kept.insert(c.run_id());
    } else {
      drop.push_back(c);
    }
  }
  for (auto& [id, e] : experiments_) {
    if (e.row.state != v1::EXPERIMENT_RUNNING) continue;
    std::vector<int64_t> lost;
    for (auto& [rid, r] : e.runs) {
      if (IsHeld(r.state) && r.worker == worker && !kept.count(rid)) lost.push_back(rid);
    }
    // The worker does not have these (an assignment whose answer it never got, or a run it lost).
    for (int64_t rid : lost) {
      LoseRun(e, e.runs[rid], absl::StrCat(worker, " no longer has it (restarted, or never got the assignment)"));
    }
  }
  return drop;
}

absl::StatusOr<v1::RegisterResponse> Coordinator::Register(const v1::RegisterRequest& request) {
  if (request.name().empty()) return absl::InvalidArgumentError("register: name is empty");
  if (request.slots() < 1) return absl::InvalidArgumentError("register: slots must be >= 1");
  absl::MutexLock lock(&mu_);
  auto live = workers_.find(request.name());
  if (live != workers_.end() && live->second.registered && live->second.alive &&
      !live->second.info.instance().empty() && live->second.info.instance() != request.instance() &&
      clock_->NowMs() - live->second.last_ms <= options_.lease_ms) {
    return absl::AlreadyExistsError(absl::StrCat("worker name ", request.name(), " is in use by a live daemon on ",
                                                 live->second.info.host(), " (give each daemon its own --name)"));
  }
  Worker& w = workers_[request.name()];
  w.info = request;
  w.info.clear_running();
  w.last_ms = clock_->NowMs();
  w.alive = true;
  w.registered = true;
  v1::RegisterResponse out;
  out.set_heartbeat_ms(options_.heartbeat_ms);
  out.set_lease_ms(options_.lease_ms);
  for (v1::RunClaim& c : Reconcile(request.name(), request.running())) *out.add_drop() = c;
  LOG(INFO) << "worker " << request.name() << " registered: " << request.slots() << " slot(s), "
            << request.running_size() << " claimed run(s), " << out.drop_size() << " dropped";
  return out;
}

bool Coordinator::AssignNext(const std::string& worker, v1::Assignment* out) {
  Experiment* chosen = nullptr;
  int64_t chosen_run = 0;
  double chosen_load = 0;
  for (auto& [id, e] : experiments_) {
    if (e.row.state != v1::EXPERIMENT_RUNNING) continue;
    std::set<int> started, open;
    int held = 0;
    for (const Trial& t : e.trials) {
      if (t.row.state.empty()) open.insert(t.row.trial);
    }
    for (const auto& [rid, r] : e.runs) {
      held += IsHeld(r.state);
      if (open.count(r.trial) && (r.state != RunState::kPending || r.attempt > 0)) started.insert(r.trial);
    }
    const int concurrent = std::max(1, e.spec.search().concurrent());
    int64_t candidate = 0;
    bool candidate_started = false;
    for (const auto& [rid, r] : e.runs) {
      // The final fit (fold 0) belongs to a finished trial and always may start.
      if (r.state != RunState::kPending || (!open.count(r.trial) && r.fold != 0)) continue;
      const bool s = started.count(r.trial) > 0 || r.fold == 0;
      if (!s && static_cast<int>(started.size()) >= concurrent) continue;
      // Runs of trials already under way first, then by (trial, fold) order of the map.
      if (candidate == 0 || (s && !candidate_started)) {
        candidate = rid;
        candidate_started = s;
      }
      if (candidate_started) break;
    }
    if (candidate == 0) continue;
    const double load = held / Weight(e.row.priority);
    if (chosen == nullptr || load < chosen_load) {
      chosen = &e;
      chosen_run = candidate;
      chosen_load = load;
    }
  }
  if (chosen == nullptr) return false;
  auto epoch = store_->Assign(chosen_run, worker);
  if (!epoch.ok() || !Refresh(*chosen, chosen_run).ok()) {
    LOG(ERROR) << "assigning fold run " << chosen_run << ": " << epoch.status();
    return false;
  }
  ++assignments_;
  const FoldRun& run = chosen->runs[chosen_run];
  EmitRunState(*chosen, run);
  out->set_run_id(run.id);
  out->set_lease_epoch(run.lease_epoch);
  out->set_experiment_id(chosen->row.id);
  out->set_trial(run.trial);
  out->set_fold(run.fold);
  out->set_attempt(run.attempt);
  if (const Trial* t = FindTrial(*chosen, run.trial)) *out->mutable_spec() = t->spec;
  out->set_has_checkpoint(run.has_checkpoint);
  return true;
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& request) {
  absl::MutexLock lock(&mu_);
  v1::HeartbeatResponse out;
  auto it = workers_.find(request.name());
  if (it == workers_.end() || !it->second.registered || !it->second.alive) {
    out.set_reregister(true);
    return out;
  }
  it->second.last_ms = clock_->NowMs();
  for (v1::RunClaim& c : Reconcile(request.name(), request.running())) *out.add_drop() = c;
  const int free = std::min(request.free_slots(), it->second.info.slots());
  for (int i = 0; i < free; ++i) {
    v1::Assignment a;
    if (!AssignNext(request.name(), &a)) break;
    *out.add_assignments() = std::move(a);
  }
  return out;
}

absl::StatusOr<v1::ReportEventsResponse> Coordinator::ReportEvents(const v1::ReportEventsRequest& request) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(request.run_id(), request.lease_epoch(), &e));
  if (run->state == RunState::kAssigned) {
    RETURN_IF_ERROR(store_->Transition(run->id, run->lease_epoch, RunState::kRunning, ""));
    RETURN_IF_ERROR(Refresh(*e, request.run_id()));
    run = &e->runs[request.run_id()];
    EmitRunState(*e, *run);
  }
  std::vector<EventHub::Outgoing> out;
  out.reserve(request.events_size());
  const int64_t now = clock_->NowMs();
  for (const v1::Event& in : request.events()) {
    const std::string kind = EventKind(in);
    if (kind.empty() || kind == "state" || kind == "trial_result" || kind == "end" || kind == "fold_result") {
      return absl::InvalidArgumentError(absl::StrCat("report: a worker may send point, weights and epoch events, not '",
                                                     kind.empty() ? "empty" : kind, "'"));
    }
    v1::Event ev = in;
    ev.set_seq(0);
    ev.set_run_id(run->id);
    ev.set_trial(run->trial);
    ev.set_fold(run->fold);
    ev.set_attempt(run->attempt);
    if (ev.time_ms() == 0) ev.set_time_ms(now);
    if (ev.has_epoch()) e->last_epoch[run->id] = ev.epoch().epoch();
    out.push_back(EventHub::Outgoing{kind, ev.SerializeAsString(), kind == "weights"});
  }
  ASSIGN_OR_RETURN(StateStore::Appended a, hub_->PublishRunEvents(e->row.id, run->id, run->lease_epoch,
                                                                  request.first_index(), out));
  if (!out.empty()) {
    run->reported = std::max<int64_t>(run->reported, request.first_index() + request.events_size() - 1);
  }
  v1::ReportEventsResponse response;
  if (e->spec.search().early_stopping()) {
    const FoldRun current = *run;
    for (int i = a.skipped; i < request.events_size(); ++i) {
      if (request.events(i).has_epoch()) CheckRung(*e, current, request.events(i).epoch());
    }
    response.set_stop(e->runs[current.id].state == RunState::kCancelled);
  }
  return response;
}

absl::Status Coordinator::Complete(const v1::CompleteRunRequest& request) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(request.run_id(), request.lease_epoch(), &e));
  RETURN_IF_ERROR(store_->Complete(run->id, run->lease_epoch, request.result().SerializeAsString()));
  RETURN_IF_ERROR(Refresh(*e, request.run_id()));
  run = &e->runs[request.run_id()];
  v1::Event result;
  *result.mutable_fold_result() = request.result();
  Emit(*e, run, std::move(result));
  EmitRunState(*e, *run);
  Settle(*e, run->trial);
  return absl::OkStatus();
}

absl::Status Coordinator::Fail(const v1::FailRunRequest& request) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(request.run_id(), request.lease_epoch(), &e));
  const std::string message = request.message().empty() ? "failed without a message" : request.message();
  RunState state = RunState::kFailed;
  if (request.retryable() || request.released()) {
    ASSIGN_OR_RETURN(state, store_->Retry(run->id, run->lease_epoch, message, e->spec.max_restarts(),
                                          /*count_attempt=*/!request.released()));
  } else {
    RETURN_IF_ERROR(store_->Transition(run->id, run->lease_epoch, RunState::kFailed, message));
  }
  RETURN_IF_ERROR(Refresh(*e, request.run_id()));
  run = &e->runs[request.run_id()];
  EmitRunState(*e, *run);
  if (state == RunState::kFailed) Settle(*e, run->trial);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ArtifactStore::Upload>> Coordinator::BeginUpload(int64_t run_id, int64_t epoch,
                                                                                 const std::string& name) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(run_id, epoch, &e));
  return artifacts_->BeginUpload(e->row.id, run->trial, run->fold, name);
}

absl::StatusOr<int64_t> Coordinator::FinishUpload(int64_t run_id, int64_t epoch, const std::string& name,
                                                  ArtifactStore::Upload& upload, const std::string& sha256) {
  // Under the lock, so a worker whose lease lapsed meanwhile cannot replace the new holder's file.
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(run_id, epoch, &e));
  ASSIGN_OR_RETURN(int64_t size, upload.Commit(sha256));
  if (name == "checkpoint.pt" && !run->has_checkpoint) {
    RETURN_IF_ERROR(store_->SetHasCheckpoint(run_id, epoch));
    run->has_checkpoint = true;
  }
  return size;
}

absl::StatusOr<std::string> Coordinator::ArtifactPath(int64_t run_id, const std::string& name) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, FindRun(run_id, &e));
  return artifacts_->Find(e->row.id, run->trial, run->fold, name);
}

std::string Coordinator::MetricsText() {
  const EventHub::Stats watch = hub_->stats();
  absl::MutexLock lock(&mu_);
  std::map<std::string, int64_t> runs, experiments;
  for (RunState st : {RunState::kPending, RunState::kAssigned, RunState::kRunning, RunState::kSucceeded,
                      RunState::kFailed, RunState::kCancelled}) {
    runs[absl::AsciiStrToLower(RunStateName(st))] = 0;
  }
  for (int st : {v1::EXPERIMENT_RUNNING, v1::EXPERIMENT_SUCCEEDED, v1::EXPERIMENT_FAILED, v1::EXPERIMENT_CANCELLED}) {
    experiments[absl::AsciiStrToLower(ExperimentStateName(st))] = 0;
  }
  for (const auto& [id, e] : experiments_) {
    ++experiments[absl::AsciiStrToLower(ExperimentStateName(e.row.state))];
    for (const auto& [rid, r] : e.runs) ++runs[absl::AsciiStrToLower(RunStateName(r.state))];
  }
  int64_t alive = 0, slots = 0;
  for (const auto& [name, w] : workers_) {
    if (!w.alive || !w.registered) continue;
    ++alive;
    slots += w.info.slots();
  }
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  metric("mal_fold_runs", "gauge", "Fold runs by state.");
  for (const auto& [st, n] : runs) absl::StrAppend(&out, "mal_fold_runs{state=\"", st, "\"} ", n, "\n");
  metric("mal_experiments", "gauge", "Experiments by state.");
  for (const auto& [st, n] : experiments) absl::StrAppend(&out, "mal_experiments{state=\"", st, "\"} ", n, "\n");
  metric("mal_queue_length", "gauge", "Fold runs waiting for a worker slot.");
  absl::StrAppend(&out, "mal_queue_length ", runs["pending"], "\n");
  metric("mal_workers_alive", "gauge", "Registered workers whose lease holds.");
  absl::StrAppend(&out, "mal_workers_alive ", alive, "\n");
  metric("mal_worker_slots", "gauge", "Slots of the live workers.");
  absl::StrAppend(&out, "mal_worker_slots ", slots, "\n");
  metric("mal_assignments_total", "counter", "Fold runs assigned to workers.");
  absl::StrAppend(&out, "mal_assignments_total ", assignments_, "\n");
  metric("mal_lease_expiries_total", "counter", "Workers whose lease lapsed.");
  absl::StrAppend(&out, "mal_lease_expiries_total ", lease_expiries_, "\n");
  metric("mal_runs_lost_total", "counter", "Fold runs lost with their worker.");
  absl::StrAppend(&out, "mal_runs_lost_total ", runs_lost_, "\n");
  metric("mal_watch_subscribers", "gauge", "Open watch streams.");
  absl::StrAppend(&out, "mal_watch_subscribers ", watch.watchers, "\n");
  metric("mal_watch_coalesced_total", "counter", "Weight summaries replaced by a newer one in a full watch queue.");
  absl::StrAppend(&out, "mal_watch_coalesced_total ", watch.coalesced, "\n");
  metric("mal_watch_ended_slow_total", "counter", "Watch streams ended for falling behind.");
  absl::StrAppend(&out, "mal_watch_ended_slow_total ", watch.ended_slow, "\n");
  return out;
}

void Coordinator::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
}

void Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  // Forget workers silent for an hour (their runs were re-queued long ago).
  for (auto it = workers_.begin(); it != workers_.end();) {
    it = !it->second.alive && now - it->second.last_ms > 3600 * 1000 ? workers_.erase(it) : std::next(it);
  }
  for (auto& [name, w] : workers_) {
    if (!w.alive || now - w.last_ms <= options_.lease_ms) continue;
    w.alive = false;
    ++lease_expiries_;
    LOG(WARNING) << "worker " << name << ": lease lapsed (" << now - w.last_ms << " ms since its last call)";
    for (auto& [id, e] : experiments_) {
      std::vector<int64_t> held;
      for (auto& [rid, r] : e.runs) {
        if (IsHeld(r.state) && r.worker == name) held.push_back(rid);
      }
      for (int64_t rid : held) LoseRun(e, e.runs[rid], absl::StrCat("lease of ", name, " lapsed"));
    }
  }
}

}  // namespace mal::server
