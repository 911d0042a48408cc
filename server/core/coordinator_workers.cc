// Coordinator: the worker side of the API (registration, heartbeats with assignments, events,
// completion, uploads) and lease expiry (coordinator.h).

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/util/logging.h"
#include "common/util/run_files.h"
#include "common/util/status_macros.h"
#include "server/core/coordinator.h"
#include "server/core/scheduler.h"

namespace mal::server {

namespace {

// The event kinds a worker may report (the coordinator writes the others).
bool WorkerMayReport(const v1::Event& e) {
  return e.body_case() == v1::Event::kPoint || e.body_case() == v1::Event::kWeights ||
         e.body_case() == v1::Event::kEpoch || e.body_case() == v1::Event::kRestart;
}

}  // namespace

std::vector<v1::RunClaim> Coordinator::Reconcile(
    const std::string& worker, const google::protobuf::RepeatedPtrField<v1::RunClaim>& claims) {
  std::vector<v1::RunClaim> drop;
  std::set<int64_t> kept;
  for (const v1::RunClaim& c : claims) {
    Experiment* e = nullptr;
    auto run = FindRun(c.run_id(), &e);
    if (run.ok() && IsHeld((*run)->state) && (*run)->lease_epoch == c.lease_epoch() &&
        (*run)->worker == worker) {
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
      LoseRun(e, e.runs[rid],
              absl::StrCat(worker, " no longer has it (restarted, or never got the assignment)"));
    }
  }
  return drop;
}

namespace {

// 32 random bytes as hex, from OpenSSL's CSPRNG.
absl::StatusOr<std::string> NewSession() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) {
    return absl::InternalError("register: no random bytes for a session credential");
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

}  // namespace

absl::Status Coordinator::Authenticate(const WorkerCaller& caller, int64_t run_id,
                                       bool allow_unknown, bool completion) {
  if (caller.name.empty() || caller.session.empty()) {
    return absl::UnauthenticatedError(
        "worker calls carry mal-worker and mal-worker-session metadata (the session comes from "
        "Register)");
  }
  absl::MutexLock lock(&mu_);
  auto w = workers_.find(caller.name);
  if (w == workers_.end() || !w->second.registered || w->second.session.empty()) {
    if (allow_unknown) return absl::OkStatus();
    return absl::UnavailableError(
        absl::StrCat("worker ", caller.name, " is not registered here: register again"));
  }
  const std::string& expected = w->second.session;
  if (caller.session.size() != expected.size() ||
      CRYPTO_memcmp(caller.session.data(), expected.data(), expected.size()) != 0) {
    return absl::UnauthenticatedError(
        absl::StrCat("worker ", caller.name, ": the session is not the one Register issued"));
  }
  if (run_id == 0) return absl::OkStatus();
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, FindRun(run_id, &e));
  if (completion && run->worker == caller.name && run->state == RunState::kSucceeded) {
    return absl::OkStatus();  // a retried completion: Complete answers it
  }
  if (run->worker != caller.name || !IsHeld(run->state)) {
    // To a registered worker, a run that is not (or no longer) its own is stale, as a lapsed
    // lease is: the daemon stops it (FAILED_PRECONDITION, like a stale epoch).
    return absl::FailedPreconditionError(
        absl::StrCat("fold run ", run_id, " is not leased to worker ", caller.name));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::RegisterResponse> Coordinator::Register(const v1::RegisterRequest& request) {
  if (request.name().empty()) return absl::InvalidArgumentError("register: name is empty");
  if (request.slots() < 1) return absl::InvalidArgumentError("register: slots must be >= 1");
  absl::MutexLock lock(&mu_);
  // A Register served before the first Tick after a pause would see every lease lapsed, and let a
  // second daemon take a live daemon's name: the pause is caught up with first, as Tick does.
  ExtendLeasesAfterAbsence(clock_->NowMs());
  auto live = workers_.find(request.name());
  if (live != workers_.end() && live->second.registered && live->second.alive &&
      !live->second.info.instance().empty() && live->second.info.instance() != request.instance() &&
      clock_->NowMs() - live->second.last_ms <= options_.lease_ms) {
    return absl::AlreadyExistsError(
        absl::StrCat("worker name ", request.name(), " is in use by a live daemon on ",
                     live->second.info.host(), " (give each daemon its own --name)"));
  }
  Worker& w = workers_[request.name()];
  w.info = request;
  w.info.clear_running();
  w.last_ms = clock_->NowMs();
  w.alive = true;
  w.registered = true;
  ASSIGN_OR_RETURN(w.session, NewSession());
  v1::RegisterResponse out;
  out.set_session(w.session);
  out.set_heartbeat_ms(options_.heartbeat_ms);
  out.set_lease_ms(options_.lease_ms);
  for (v1::RunClaim& c : Reconcile(request.name(), request.running())) *out.add_drop() = c;
  LOG(INFO) << "worker " << request.name() << " registered: " << request.slots() << " slot(s), "
            << request.running_size() << " claimed run(s), " << out.drop_size() << " dropped";
  return out;
}

bool Coordinator::AssignNext(const std::string& worker, v1::Assignment* out) {
  const std::optional<RunChoice> choice = PickNextRun(experiments_);
  if (!choice) return false;
  Experiment& e = experiments_.at(choice->experiment_id);
  FoldRun updated;
  RunEvents events = MoveEvents();
  auto epoch = hub_->Commit(
      e.row.id, events, [&] { return store_->Assign(choice->run_id, worker, &updated, &events); });
  if (!epoch.ok()) {
    LOG(ERROR) << "assigning fold run " << choice->run_id << ": " << epoch.status();
    return false;
  }
  ++assignments_;
  FoldRun& run = e.runs[choice->run_id] = std::move(updated);
  out->set_run_id(run.id);
  out->set_lease_epoch(run.lease_epoch);
  out->set_experiment_id(e.row.id);
  out->set_trial(run.trial);
  out->set_fold(run.fold);
  out->set_attempt(run.attempt);
  if (const Trial* t = e.FindTrial(run.trial)) *out->mutable_spec() = t->spec;
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

absl::StatusOr<v1::ReportEventsResponse> Coordinator::ReportEvents(
    const v1::ReportEventsRequest& request) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(request.run_id(), request.lease_epoch(), &e));
  for (const v1::Event& in : request.events()) {
    if (!WorkerMayReport(in)) {
      return absl::InvalidArgumentError(
          absl::StrCat("report: a worker may send point, weights, epoch and restart events, not '",
                       (*EventKind(in) ? EventKind(in) : "empty"), "'"));
    }
  }
  if (run->state == RunState::kAssigned) {
    FoldRun updated;
    RunEvents events = MoveEvents();
    RETURN_IF_ERROR(hub_->Commit(e->row.id, events, [&] {
      return store_->Transition(run->id, run->lease_epoch, RunState::kRunning, "", &updated,
                                &events);
    }));
    *run = std::move(updated);
  }
  std::vector<EventHub::Outgoing> out;
  out.reserve(request.events_size());
  const int64_t now = clock_->NowMs();
  for (const v1::Event& in : request.events()) {
    v1::Event ev = in;
    ev.set_seq(0);
    ev.set_run_id(run->id);
    ev.set_trial(run->trial);
    ev.set_fold(run->fold);
    ev.set_attempt(run->attempt);
    if (ev.time_ms() == 0) ev.set_time_ms(now);
    if (ev.has_epoch()) e->last_epoch[run->id] = ev.epoch().epoch();
    if (ev.has_restart()) e->last_epoch[run->id] = 0;  // epochs count from 1 again
    const std::string kind = EventKind(ev);
    out.push_back(EventHub::Outgoing{kind, ev.SerializeAsString(), kind == "weights"});
  }
  ASSIGN_OR_RETURN(
      StateStore::Appended a,
      hub_->PublishRunEvents(e->row.id, run->id, run->lease_epoch, request.first_index(), out));
  if (!out.empty()) {
    run->reported =
        std::max<int64_t>(run->reported, request.first_index() + request.events_size() - 1);
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
  const auto found = FindRun(request.run_id(), &e);
  if (found.ok() && (*found)->state == RunState::kSucceeded &&
      (*found)->lease_epoch == request.lease_epoch()) {
    return absl::OkStatus();  // completed already; the reply to the first call was lost
  }
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(request.run_id(), request.lease_epoch(), &e));
  // The result, its fold_result and SUCCEEDED events in one transaction: a crash keeps all or none.
  v1::Event result;
  *result.mutable_fold_result() = request.result();
  RunEvents events = MoveEvents(std::move(result));
  FoldRun updated;
  RETURN_IF_ERROR(hub_->Commit(e->row.id, events, [&] {
    return store_->Complete(run->id, run->lease_epoch, request.result().SerializeAsString(),
                            &updated, &events);
  }));
  *run = std::move(updated);
  Settle(*e, run->trial);
  return absl::OkStatus();
}

absl::Status Coordinator::Fail(const v1::FailRunRequest& request) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(request.run_id(), request.lease_epoch(), &e));
  const std::string message =
      request.message().empty() ? "failed without a message" : request.message();
  FoldRun updated;
  RunEvents events = MoveEvents();
  if (request.retryable() || request.released()) {
    RETURN_IF_ERROR(hub_->Commit(e->row.id, events,
                                 [&] {
                                   return store_->Retry(
                                       run->id, run->lease_epoch, message, e->spec.max_restarts(),
                                       /*count_attempt=*/!request.released(), &updated, &events);
                                 })
                        .status());
  } else {
    RETURN_IF_ERROR(hub_->Commit(e->row.id, events, [&] {
      return store_->Transition(run->id, run->lease_epoch, RunState::kFailed, message, &updated,
                                &events);
    }));
  }
  *run = std::move(updated);
  if (run->state == RunState::kFailed) Settle(*e, run->trial);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ArtifactStore::Upload>> Coordinator::BeginUpload(
    int64_t run_id, int64_t epoch, const std::string& name) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(run_id, epoch, &e));
  auto upload = artifacts_->BeginUpload(e->row.id, run->trial, run->fold, name);
  if (!upload.ok()) NoteUploadWaiting(*e, *run, name, upload.status());
  return upload;
}

void Coordinator::UploadRefused(int64_t run_id, int64_t epoch, const std::string& name,
                                const absl::Status& refusal) {
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  auto run = HeldRun(run_id, epoch, &e);
  if (run.ok()) NoteUploadWaiting(*e, **run, name, refusal);
}

namespace {
constexpr absl::string_view kWaitingToUpload = "waiting to upload ";
}  // namespace

void Coordinator::NoteUploadWaiting(Experiment& e, FoldRun& run, const std::string& name,
                                    const absl::Status& refusal) {
  std::string message;
  if (refusal.code() == absl::StatusCode::kResourceExhausted) {
    message = absl::StrCat(kWaitingToUpload, name, ": ", refusal.message());
  } else if (!refusal.ok() || !absl::StartsWith(run.message, kWaitingToUpload)) {
    return;  // another refusal, or nothing to clear
  }
  if (message == run.message) return;
  run.message = std::move(message);
  EmitRunState(e, run);
}

absl::StatusOr<int64_t> Coordinator::FinishUpload(int64_t run_id, int64_t epoch,
                                                  const std::string& name,
                                                  ArtifactStore::Upload& upload,
                                                  const std::string& sha256) {
  // Under the lock, so a worker whose lease lapsed meanwhile cannot replace the new holder's file.
  absl::MutexLock lock(&mu_);
  Experiment* e = nullptr;
  ASSIGN_OR_RETURN(FoldRun * run, HeldRun(run_id, epoch, &e));
  ASSIGN_OR_RETURN(int64_t size, upload.Commit(sha256));
  NoteUploadWaiting(*e, *run, name, absl::OkStatus());
  if (name == run_files::kCheckpoint && !run->has_checkpoint) {
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

int64_t TickPeriodMs(const CoordinatorOptions& options) {
  return std::max<int64_t>(50, options.heartbeat_ms / 2);
}

void Coordinator::ExtendLeasesAfterAbsence(int64_t now) {
  const int64_t period = TickPeriodMs(options_);
  const int64_t gap = now - last_tick_ms_;
  last_tick_ms_ = now;
  if (gap <= std::max(options_.lease_ms / 2, 4 * period)) return;
  // The coordinator was away, not the workers: their calls during the gap went unanswered.
  const int64_t away = gap - period;
  LOG(WARNING) << "coordinator did not run for " << gap
               << " ms (stopped, suspended or slow to start?): extending every lease by " << away
               << " ms";
  for (auto& [name, w] : workers_) {
    if (w.alive) w.last_ms = std::min(now, w.last_ms + away);
  }
}

void Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  ExtendLeasesAfterAbsence(now);
  // Forget workers silent for an hour (their runs were re-queued long ago).
  for (auto it = workers_.begin(); it != workers_.end();) {
    it = !it->second.alive && now - it->second.last_ms > 3600 * 1000 ? workers_.erase(it)
                                                                     : std::next(it);
  }
  for (auto& [name, w] : workers_) {
    if (!w.alive || now - w.last_ms <= options_.lease_ms) continue;
    w.alive = false;
    ++lease_expiries_;
    LOG(WARNING) << "worker " << name << ": lease lapsed (" << now - w.last_ms
                 << " ms since its last call)";
    for (auto& [id, e] : experiments_) {
      std::vector<int64_t> held;
      for (auto& [rid, r] : e.runs) {
        if (IsHeld(r.state) && r.worker == name) held.push_back(rid);
      }
      for (int64_t rid : held) LoseRun(e, e.runs[rid], absl::StrCat("lease of ", name, " lapsed"));
    }
  }
  // Settlements that could not be written (a full disk), tried again every few seconds as a start
  // would try them; a failure puts the experiment back in unsettled_.
  if (!unsettled_.empty() && now >= next_settle_ms_) {
    next_settle_ms_ = now + kSettleRetryMs;
    std::set<std::string> unsettled;
    unsettled.swap(unsettled_);
    for (const std::string& id : unsettled) {
      auto it = experiments_.find(id);
      if (it != experiments_.end() && it->second.row.state == v1::EXPERIMENT_RUNNING)
        SettleAll(it->second);
    }
  }
}

}  // namespace mal::server
