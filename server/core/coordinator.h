#ifndef MAL_SERVER_CORE_COORDINATOR_H_
#define MAL_SERVER_CORE_COORDINATOR_H_

// The coordinator's core: experiments -> trials -> fold runs, scheduling onto worker slots,
// leases and fencing, retries, aggregation, model registration, and the event log. Every RPC of
// service.proto is one method here taking and returning its messages; the gRPC services are thin
// adapters (server/service), so all of this is tested without sockets, with a fake clock.
//
// This class is the facade that takes the one lock, asks the pure policies and applies their
// answers to the view, the store and the event log: scheduler.h (which run a free slot takes),
// early_stopping.h (which trial stops), lifecycle.h (aggregates, settling, the final fit, the
// end). Its methods live in coordinator.cc (client side), coordinator_workers.cc (worker side,
// leases), coordinator_lifecycle.cc and coordinator_recovery.cc (start).
//
// Durability: every state change is written to the StateStore before it is acknowledged, and the
// in-memory view is rebuilt from the store at start, so kill -9 loses nothing acknowledged. Runs
// held by workers when the coordinator stopped stay theirs for one lease: a worker that
// re-registers claiming them keeps them; otherwise they become LOST and are re-queued.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mal/v1/service.pb.h"
#include "server/core/artifact_store.h"
#include "server/core/experiment.h"
#include "server/core/lifecycle.h"
#include "server/events/event_hub.h"
#include "server/state/state_store.h"

namespace mal::server {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() = 0;
};
Clock* SystemClock();

// Counts for monitoring (server/service/prometheus_text.h): a consistent snapshot.
struct CoordinatorCounters {
  std::map<RunState, int64_t> runs_by_state;    // fold runs
  std::map<int, int64_t> experiments_by_state;  // by mal.v1.ExperimentState
  int64_t workers_alive = 0, worker_slots = 0;  // registered workers whose lease holds
  int64_t assignments = 0, lease_expiries = 0, runs_lost = 0;  // since start
};

struct CoordinatorOptions {
  int64_t lease_ms = 15000;     // a worker silent this long loses its runs
  int64_t heartbeat_ms = 1000;  // how often workers are told to call
  std::string version;          // reported to clients
  // Normalised absolute roots (common/spec/spec_paths.h) every path of a submitted spec must
  // lie under; empty: no containment.
  std::vector<std::string> data_roots;
};

// How often the lease check (Coordinator::Tick) runs: heartbeat_ms / 2, at least every 50 ms
// (CoordinatorServer's ticker).
int64_t TickPeriodMs(const CoordinatorOptions& options);

class Coordinator {
 public:
  // Loads the state; the pointers must outlive the coordinator.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(StateStore* store, EventHub* hub,
                                                             ArtifactStore* artifacts, Clock* clock,
                                                             CoordinatorOptions options);

  // Client side.
  absl::StatusOr<v1::SubmitExperimentResponse> Submit(const v1::SubmitExperimentRequest& request);
  absl::StatusOr<v1::ExperimentInfo> Get(const std::string& experiment_id, bool with_runs = true);
  // True when an experiment was submitted with `request_id` (a retry, which rate limits let
  // through: it creates nothing). False for "" and on a store error.
  bool KnownRequestId(const std::string& request_id);
  // A page of experiment summaries in submission order (service.proto ListExperimentsRequest).
  // INVALID_ARGUMENT for a page_size outside 0..1000 or a page_token this did not issue.
  absl::StatusOr<v1::ListExperimentsResponse> List(const v1::ListExperimentsRequest& request);
  // Deletes a finished experiment with its runs, events and artifacts (service.proto
  // DeleteExperimentRequest for the errors). The in-memory view drops it first; artifacts that
  // a crash leaves behind are removed at the next start.
  absl::StatusOr<v1::DeleteExperimentResponse> Delete(const std::string& experiment_id);
  absl::StatusOr<v1::ExperimentInfo> Cancel(const std::string& experiment_id);
  // Returns once the experiment is no longer RUNNING, or after `timeout`.
  absl::StatusOr<v1::ExperimentInfo> Wait(const std::string& experiment_id, absl::Duration timeout);
  absl::StatusOr<v1::ResultsResponse> Results(const std::string& experiment_id);
  v1::ListWorkersResponse Workers();
  absl::StatusOr<v1::ExperimentState> State(const std::string& experiment_id);

  // Worker side.
  // Who a WorkerGateway call says it comes from (its mal-worker / mal-worker-session metadata).
  struct WorkerCaller {
    std::string name, session;
  };
  // Checks a worker call before it is served: the session Register issued to `caller.name`
  // (compared in constant time), and when `run_id` != 0 that the run is leased to that worker.
  // UNAUTHENTICATED: no or a wrong session; UNAVAILABLE: the worker is not registered (the
  // coordinator restarted: the daemon registers again), unless `allow_unknown` (Heartbeat, whose
  // answer tells it to); FAILED_PRECONDITION: the run is not (or no longer) leased to this worker
  // (the daemon stops it, as for a stale epoch); NOT_FOUND: no such run. With `completion`
  // (CompleteRun), a run this worker already completed passes: Complete answers the retry of a
  // completion whose reply a coordinator restart lost.
  // Nothing changes on a refusal.
  absl::Status Authenticate(const WorkerCaller& caller, int64_t run_id, bool allow_unknown = false,
                            bool completion = false);
  absl::StatusOr<v1::RegisterResponse> Register(const v1::RegisterRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  absl::StatusOr<v1::ReportEventsResponse> ReportEvents(const v1::ReportEventsRequest& request);
  // Records the run's result and settles its trial. A retry (the run already SUCCEEDED under
  // the same lease epoch: the reply to the first call was lost) is answered OK and changes
  // nothing, so the daemon can drop the run's files.
  absl::Status Complete(const v1::CompleteRunRequest& request);
  absl::Status Fail(const v1::FailRunRequest& request);
  // An upload for the holder of (run, epoch); checked again by FinishUpload. A refusal for the
  // disk's free-space floor (RESOURCE_EXHAUSTED, which the worker retries) becomes the run's
  // message, "waiting to upload NAME: ...", and a run state event, so `malctl status` says why a
  // run that trained is not finishing; the next upload that commits clears it.
  absl::StatusOr<std::unique_ptr<ArtifactStore::Upload>> BeginUpload(int64_t run_id, int64_t epoch,
                                                                     const std::string& name);
  absl::StatusOr<int64_t> FinishUpload(int64_t run_id, int64_t epoch, const std::string& name,
                                       ArtifactStore::Upload& upload, const std::string& sha256);
  // An upload refused while its chunks were written (ArtifactStore::Upload::Append): the same
  // message as BeginUpload's refusals when `refusal` is RESOURCE_EXHAUSTED; nothing otherwise, or
  // when (run, epoch) is no longer held.
  void UploadRefused(int64_t run_id, int64_t epoch, const std::string& name,
                     const absl::Status& refusal);
  // The path of a run's artifact (checkpoints for a resumed attempt on another host).
  absl::StatusOr<std::string> ArtifactPath(int64_t run_id, const std::string& name);

  // For clients: a fold run's files, and the path of one of them. NotFound names the experiment,
  // the run (trial, fold) or the file; InvalidArgument a bad name.
  absl::StatusOr<v1::ListArtifactsResponse> ListArtifacts(const v1::ArtifactRequest& request);
  absl::StatusOr<std::string> RunArtifactPath(const v1::ArtifactRequest& request);

  // A snapshot of the counts that server/service/prometheus_text.h exposes.
  CoordinatorCounters Counters();

  // Ends pending Wait calls (graceful shutdown).
  void Shutdown();

  // Expires the leases of silent workers: their runs become LOST and are re-queued (or FAILED
  // past max_restarts). Called every TickPeriodMs (CoordinatorServer). A gap since the last call
  // (or since the start, for the first) of more than max(lease_ms / 2, 4 periods) means the
  // coordinator itself did not run (stopped by SIGSTOP, a suspended VM, a slow start, a stall):
  // that time, less one period, is not held against any worker, whose calls could not be
  // answered, so each live worker's lease is extended by it (docs/service.md). Then settles again
  // the experiments whose trial settlement, final fit or end could not be written (a full disk).
  void Tick();

 private:
  // Tick's pause rule, also applied by Register before it judges whether a name's daemon is live:
  // a gap since the last call longer than half a lease (or four tick periods) extends every live
  // worker's lease by the gap less one period. Records `now` (ms) as the last call.
  void ExtendLeasesAfterAbsence(int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Coordinator(StateStore* store, EventHub* hub, ArtifactStore* artifacts, Clock* clock,
              CoordinatorOptions options)
      : store_(store),
        hub_(hub),
        artifacts_(artifacts),
        clock_(clock),
        options_(std::move(options)) {}
  // Recovery (coordinator_recovery.cc): the view from the store, then what a crash interrupted.
  absl::Status Load();
  static absl::StatusOr<Trial> LoadTrial(const Experiment& e, const TrialRow& row);
  // Adds the experiment's runs (from the store) to the in-memory view.
  absl::Status LoadRuns(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A RUNNING experiment after a restart: trial results and the End event already published but
  // whose state writes were lost, the last epochs and rungs from the event log, then settling.
  absl::Status Recover(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::StatusOr<Experiment*> Find(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<FoldRun*> FindRun(int64_t run_id, Experiment** experiment)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The run `run_id` when the caller holds its lease `epoch` (FailedPrecondition otherwise).
  absl::StatusOr<FoldRun*> HeldRun(int64_t run_id, int64_t epoch, Experiment** e)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::ExperimentInfo Info(const Experiment& e, bool with_runs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Publishes one experiment-level or run-level event.
  // `event` with the run's ids (or trial -1) and the time, as the hub takes it.
  EventHub::Outgoing Stamp(const FoldRun* run, v1::Event event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Emit(Experiment& e, const FoldRun* run, v1::Event event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmitRunState(Experiment& e, const FoldRun& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stamp's event in the form the store appends inside a move (RunEvents::make).
  EventIn StampForStore(const FoldRun* run, v1::Event event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The events a run's move commits with it (StateStore::RunEvents, through EventHub::Commit):
  // `first` when given, then the run's new state, both stamped with the run as the move left it.
  RunEvents MoveEvents(std::optional<v1::Event> first = std::nullopt)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets (`refusal` RESOURCE_EXHAUSTED) or clears (`refusal` OK) the run's "waiting to upload"
  // message, with a run state event when it changes. In memory only: the next refusal after a
  // restart sets it again.
  void NoteUploadWaiting(Experiment& e, FoldRun& run, const std::string& name,
                         const absl::Status& refusal) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Lifecycle (coordinator_lifecycle.cc), applying lifecycle.h and early_stopping.h.
  // After a run reached a final state: settles its trial, then the experiment.
  void Settle(Experiment& e, int trial) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies SettleTrial's answer for `t`: nothing for nullopt; else its state (SetTrialState),
  // cancelling its other runs first when it FAILED. `runs`: the trial's entry in FoldRunsByTrial
  // (null: found by walking every run of `e`; SettleAll passes them, so that settling every trial
  // is one pass, not trials x runs).
  void ApplySettlement(Experiment& e, Trial& t, const std::optional<TrialSettlement>& settled,
                       const std::vector<const FoldRun*>* runs = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Cancels the unfinished runs of `trial` (every trial when < 0), publishing each change. A store
  // error is logged and the rest are still cancelled; returns the first error. `runs`: as for
  // ApplySettlement (only with trial >= 0): its cross-validation folds, without a final fit (which
  // exists only once every trial settled, so never while one is being failed).
  absl::Status CancelRuns(Experiment& e, int trial, const std::string& message,
                          const std::vector<const FoldRun*>* runs = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets, persists and publishes (trial_result) a trial's final state, in one transaction. When
  // that fails, the trial stays open and the experiment is settled again at the next Tick.
  // `runs`: as for ApplySettlement.
  void SetTrialState(Experiment& e, Trial& t, TrialState state, const std::string& message,
                     const std::vector<const FoldRun*>* runs = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Once every trial settled: adds the final fit when asked (and not yet run), else finishes.
  void MaybeFinish(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Persists and publishes (state, End) the experiment's end and registers its models
  // (ModelsToRegister) in one transaction; when that fails, it stays RUNNING and is settled again
  // at the next Tick.
  void FinishExperiment(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The events that announce an experiment's end: its state change and End.
  std::vector<EventIn> EndEvents(const Outcome& outcome) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Settles every trial of `e` and then `e` (as Settle does for one), as a start does.
  void SettleAll(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The models a SUCCEEDED outcome registers (its best trial's fold runs and final fit with a
  // model file), less any registered before (deleted since, too): FinishExperiment registers them
  // with the end, in its transaction. Errors: reading the registered models failed.
  absl::StatusOr<std::vector<ModelRow>> ModelsToRegister(const Experiment& e,
                                                         const Outcome& outcome)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CheckRung(Experiment& e, const FoldRun& run, const v1::EpochMetrics& epoch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopTrial(Experiment& e, int trial, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LoseRun(Experiment& e, FoldRun& run, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Worker side (coordinator_workers.cc).
  // Assigns the run scheduler.h picks to `worker`, or returns false.
  bool AssignNext(const std::string& worker, v1::Assignment* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Validates claims; unclaimed runs held by `worker` are lost; returns the claims to drop.
  std::vector<v1::RunClaim> Reconcile(
      const std::string& worker, const google::protobuf::RepeatedPtrField<v1::RunClaim>& claims)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  StateStore* const store_;
  EventHub* const hub_;
  ArtifactStore* const artifacts_;
  Clock* const clock_;
  const CoordinatorOptions options_;

  absl::Mutex mu_;
  std::map<std::string, Experiment> experiments_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, std::string> run_experiment_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  int64_t assignments_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t lease_expiries_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t runs_lost_ ABSL_GUARDED_BY(mu_) = 0;
  // Experiments whose trial settlement, final fit or end could not be written: Tick settles them.
  std::set<std::string> unsettled_ ABSL_GUARDED_BY(mu_);
  static constexpr int64_t kSettleRetryMs = 5000;
  int64_t next_settle_ms_ ABSL_GUARDED_BY(mu_) = 0;  // Tick's next try of unsettled_
  int64_t last_tick_ms_ ABSL_GUARDED_BY(mu_) = 0;    // the last Tick's time; the start's before
  int64_t started_ms_ = 0;
};

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_COORDINATOR_H_
