#ifndef MAL_SERVER_CORE_COORDINATOR_H_
#define MAL_SERVER_CORE_COORDINATOR_H_

// The coordinator's core: experiments -> trials -> fold runs, scheduling onto worker slots,
// leases and fencing, retries, aggregation, model registration, and the event log. Every RPC of
// service.proto is one method here taking and returning its messages; the gRPC services are thin
// adapters (server/service), so all of this is tested without sockets, with a fake clock.
//
// Durability: every state change is written to the StateStore before it is acknowledged, and the
// in-memory view is rebuilt from the store at start, so kill -9 loses nothing acknowledged. Runs
// held by workers when the coordinator stopped stay theirs for one lease: a worker that
// re-registers claiming them keeps them; otherwise they become LOST and are re-queued.

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "mal/v1/service.pb.h"
#include "server/core/artifact_store.h"
#include "server/events/event_hub.h"
#include "server/state/state_store.h"

namespace mal::server {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() = 0;
};
Clock* SystemClock();

struct CoordinatorOptions {
  int64_t lease_ms = 15000;     // a worker silent this long loses its runs
  int64_t heartbeat_ms = 1000;  // how often workers are told to call
  std::string version;          // reported to clients
};

class Coordinator {
 public:
  // Loads the state; the pointers must outlive the coordinator.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(StateStore* store, EventHub* hub,
                                                             ArtifactStore* artifacts, Clock* clock,
                                                             CoordinatorOptions options);

  // Client side.
  absl::StatusOr<v1::SubmitExperimentResponse> Submit(const v1::SubmitExperimentRequest& request);
  absl::StatusOr<v1::ExperimentInfo> Get(const std::string& experiment_id, bool with_runs = true);
  v1::ListExperimentsResponse List();
  absl::StatusOr<v1::ExperimentInfo> Cancel(const std::string& experiment_id);
  // Returns once the experiment is no longer RUNNING, or after `timeout`.
  absl::StatusOr<v1::ExperimentInfo> Wait(const std::string& experiment_id, absl::Duration timeout);
  absl::StatusOr<v1::ResultsResponse> Results(const std::string& experiment_id);
  v1::ListWorkersResponse Workers();
  absl::StatusOr<v1::ExperimentState> State(const std::string& experiment_id);
  EventHub* hub() { return hub_; }

  // Worker side.
  absl::StatusOr<v1::RegisterResponse> Register(const v1::RegisterRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  absl::StatusOr<v1::ReportEventsResponse> ReportEvents(const v1::ReportEventsRequest& request);
  absl::Status Complete(const v1::CompleteRunRequest& request);
  absl::Status Fail(const v1::FailRunRequest& request);
  // An upload for the holder of (run, epoch); checked again by FinishUpload.
  absl::StatusOr<std::unique_ptr<ArtifactStore::Upload>> BeginUpload(int64_t run_id, int64_t epoch,
                                                                     const std::string& name);
  absl::StatusOr<int64_t> FinishUpload(int64_t run_id, int64_t epoch, const std::string& name,
                                       ArtifactStore::Upload& upload, const std::string& sha256);
  // The path of a run's artifact (checkpoints for a resumed attempt on another host).
  absl::StatusOr<std::string> ArtifactPath(int64_t run_id, const std::string& name);

  // Prometheus text exposition: runs and experiments by state, workers and slots, queue length,
  // assignments, lease expiries, lost runs, watch subscribers, coalesced and slow-ended streams.
  std::string MetricsText();

  // Ends pending Wait calls (graceful shutdown).
  void Shutdown();

  // Expires the leases of silent workers: their runs become LOST and are re-queued (or FAILED
  // past max_restarts). Called periodically.
  void Tick();

 private:
  struct Trial {
    TrialRow row;
    std::map<std::string, std::string> params;
    v1::ExperimentSpec spec;  // what its fold runs train
  };
  struct Experiment {
    ExperimentRow row;
    v1::ExperimentSpec spec;
    std::vector<Trial> trials;
    std::map<int64_t, FoldRun> runs;  // by id
    std::map<int64_t, int> last_epoch;
    // Early stopping: validation F1 per (fold, rung epoch), per trial.
    std::map<std::pair<int, int>, std::map<int, double>> rungs;
  };
  struct Worker {
    v1::RegisterRequest info;
    int64_t last_ms = 0;
    bool alive = true;
    bool registered = true;  // false: a placeholder for a worker known only from the store
  };

  Coordinator(StateStore* store, EventHub* hub, ArtifactStore* artifacts, Clock* clock,
              CoordinatorOptions options)
      : store_(store), hub_(hub), artifacts_(artifacts), clock_(clock), options_(std::move(options)) {}
  absl::Status Load();
  // Adds the experiment's runs (from the store) to the in-memory view.
  absl::Status LoadRuns(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static Trial* FindTrial(Experiment& e, int trial);
  static const Trial* FindTrial(const Experiment& e, int trial);
  // The final fit's run (fold 0), once added.
  static const FoldRun* FinalRun(const Experiment& e);

  absl::StatusOr<Experiment*> Find(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<FoldRun*> FindRun(int64_t run_id, Experiment** experiment) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::ExperimentInfo Info(const Experiment& e, bool with_runs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::TrialResult Aggregate(const Experiment& e, int trial) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Refresh(Experiment& e, int64_t run_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Publishes one experiment-level or run-level event.
  void Emit(Experiment& e, const FoldRun* run, v1::Event event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EmitRunState(Experiment& e, const FoldRun& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a run reached a final state: settles its trial, then the experiment.
  void Settle(Experiment& e, int trial) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishExperiment(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Once every trial settled: starts the final fit when asked (and not yet run), else finishes.
  void MaybeFinish(Experiment& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The succeeded trial with the highest mean F1 over folds, or -1.
  int BestTrial(const Experiment& e, double* best_f1) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ASHA-style early stopping at rung epochs 1, 3, 9, ... (eta = 3): a trial whose validation F1
  // on a fold is not in the top third of the trials that reached that rung on that fold stops.
  void CheckRung(Experiment& e, const FoldRun& run, const v1::EpochMetrics& epoch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopTrial(Experiment& e, int trial, const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Picks and assigns the next run for `worker`, or returns false.
  bool AssignNext(const std::string& worker, v1::Assignment* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LoseRun(Experiment& e, FoldRun& run, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Validates claims; unclaimed runs held by `worker` are lost; returns the claims to drop.
  std::vector<v1::RunClaim> Reconcile(const std::string& worker,
                                      const google::protobuf::RepeatedPtrField<v1::RunClaim>& claims)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<FoldRun*> HeldRun(int64_t run_id, int64_t epoch, Experiment** e)
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
  int64_t started_ms_ = 0;
};

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_COORDINATOR_H_
