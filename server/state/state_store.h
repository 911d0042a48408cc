#ifndef MAL_SERVER_STATE_STATE_STORE_H_
#define MAL_SERVER_STATE_STATE_STORE_H_

// The coordinator's durable state: experiments, trials, fold runs with their attempts, lease
// epochs and results, the per-experiment event log and the model registry, in SQLite (WAL,
// synchronous FULL), so that whatever a call acknowledged survives kill -9. No gRPC here.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

struct sqlite3;

namespace mal::server {

// design.md: PENDING -> ASSIGNED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED; LOST when a lease
// lapses, after which the run is PENDING again with the next attempt (or FAILED past max_restarts).
enum class RunState { kPending, kAssigned, kRunning, kSucceeded, kFailed, kCancelled, kLost };
const char* RunStateName(RunState state);
// SUCCEEDED, FAILED or CANCELLED: nothing more happens to the run.
bool IsFinished(RunState state);
// ASSIGNED or RUNNING: a worker holds its lease.
bool IsHeld(RunState state);

struct FoldRun {
  int64_t id = 0;
  std::string experiment_id;
  int trial = 0;
  int fold = 0;
  RunState state = RunState::kPending;
  int attempt = 0;          // 0 for the first try
  int64_t lease_epoch = 0;  // bumped at every assignment; reports must carry the current one
  std::string worker;
  std::string message;
  std::string result;           // serialized mal.v1.FoldResult once SUCCEEDED
  int64_t reported = 0;         // run-local index of the last event accepted under lease_epoch
  bool has_checkpoint = false;  // a checkpoint artifact was uploaded
};

// Only the holder of the current lease may report on a run: FailedPrecondition otherwise.
absl::Status CheckLeaseEpoch(const FoldRun& run, int64_t epoch);

struct ExperimentRow {
  std::string id;
  std::string request_id;
  std::string name;
  std::string spec;  // serialized mal.v1.ExperimentSpec
  int state = 1;     // mal.v1.ExperimentState
  std::string message;
  int priority = 0;
  int64_t created_ms = 0;
};

struct TrialRow {
  int trial = 0;
  std::string params;  // serialized mal.v1.TrialResult.params (the assignment), as JSON
  int64_t seed = 0;
  std::string state;  // "" while it runs; SUCCEEDED | FAILED | STOPPED | CANCELLED
  std::string message;
};

struct ModelRow {
  std::string name;
  int version = 0;  // assigned by RegisterModel
  std::string experiment_id;
  int trial = 0, fold = 0;
  double test_mean_f1 = 0;
  std::string artifact, metadata;
  int64_t created_ms = 0;
};

struct EventIn {
  std::string kind;
  std::string payload;
};

// What a state write appended to its experiment's log in its own transaction: every event
// appended, in order, and the first one's seq (0: none). Set when the write succeeded.
struct CommittedEvents {
  std::vector<EventIn> appended;
  int64_t first_seq = 0;
};

// The events a run's move appends to its experiment's log in the move's own transaction, so that
// a crash keeps the move and its events together or neither (docs/service.md, "Durability and
// failures"). `make` is called inside the transaction once per run moved, with the run's row
// before and after the move (before: an empty row with the new id for AddRun); what it returns
// is appended, in order, after the events of the runs moved before it.
struct RunEvents : CommittedEvents {
  std::function<std::vector<EventIn>(const FoldRun& before, const FoldRun& after)> make;
};

// The events a trial's or an experiment's state write appends in its own transaction (a trial's
// trial_result, an experiment's state change and End), for the same reason as RunEvents.
struct StateEvents : CommittedEvents {
  std::vector<EventIn> events;
};

// An experiment's end written with the cancellation of its runs and trials (CancelExperiment):
// its state (v1::ExperimentState) and the events that announce it (state change, End).
struct ExperimentEnd {
  int state = 0;
  std::vector<EventIn> events;
};

struct Event {
  int64_t seq = 0;  // per experiment, from 1, without gaps
  std::string kind;
  std::string payload;
  int64_t time_ms = 0;
};

// Thread-safe: one connection behind a mutex; the coordinator is the only writer.
class StateStore {
 public:
  // 1: experiments, runs, events; 2: + trials, results, models; 3: + model aliases, deletion
  static constexpr int kSchemaVersion = 4;

  // Opens or creates the database at `path`. A database written by a newer schema is an error.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& path);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // How many experiments the database has ever held, deleted ones included (ids are exp-1 ..
  // exp-N and never reused).
  absl::StatusOr<int64_t> ExperimentCount();

  // Creates an experiment and its trials x folds runs (PENDING) in one transaction, and returns
  // its id. A non-empty `request_id` seen before returns that experiment's id instead, so a client
  // may retry a submission whose answer it lost.
  absl::StatusOr<std::string> CreateExperiment(const std::string& request_id,
                                               const std::string& name, const std::string& spec,
                                               int trials, int folds);
  // The full form: the trials' assignments and seeds are stored with the experiment.
  // `existing` is set when the request id was seen before. `runs`, when given, receives the fold
  // runs created (so the caller needs no second read); `first_events` are appended as the
  // experiment's events 1, 2, ... in the same transaction (one commit for the whole submission).
  absl::StatusOr<std::string> CreateExperiment(const ExperimentRow& experiment,
                                               const std::vector<TrialRow>& trials,
                                               const std::vector<int>& folds, bool* existing,
                                               std::vector<FoldRun>* runs = nullptr,
                                               const std::vector<EventIn>& first_events = {});
  absl::StatusOr<std::string> ExperimentSpec(const std::string& experiment_id);
  absl::StatusOr<std::vector<ExperimentRow>> Experiments();  // not deleted ones
  // Deletes a finished experiment's runs, trials and events and marks its row deleted (the id is
  // never reused; its spec and request id are cleared, so a retried submit makes a new one).
  // Returns the deletion time (ms since the epoch). NOT_FOUND: no such or a deleted experiment;
  // FAILED_PRECONDITION: model versions registered from it are not deleted (named). The caller
  // checks that it is not running and removes its artifacts.
  absl::StatusOr<int64_t> DeleteExperiment(const std::string& experiment_id);
  // The id of the experiment submitted with `request_id` ("" when there is none).
  absl::StatusOr<std::string> ExperimentByRequestId(const std::string& request_id);
  // Ids of deleted experiments (to remove artifacts a crash left behind).
  absl::StatusOr<std::vector<std::string>> DeletedExperiments();
  // Sets an experiment's state (v1::ExperimentState) and message; `events`, when given, are
  // appended and `models` registered (as RegisterModel, in order) in the same transaction
  // (StateEvents), so that no model is registered from an experiment that has not ended and an
  // ended SUCCEEDED experiment has its models. Errors: NotFound (no such experiment), a failed
  // write, registration or append (Internal: nothing is changed then).
  absl::Status SetExperimentState(const std::string& experiment_id, int state,
                                  const std::string& message, StateEvents* events = nullptr,
                                  const std::vector<ModelRow>& models = {});
  absl::StatusOr<std::vector<TrialRow>> Trials(const std::string& experiment_id);
  // Sets a trial's state (OPEN, SUCCEEDED, FAILED, STOPPED, CANCELLED) and message, with `events`
  // as SetExperimentState. Errors: a failed write or append (nothing is changed then).
  absl::Status SetTrialState(const std::string& experiment_id, int trial, const std::string& state,
                             const std::string& message, StateEvents* events = nullptr);

  absl::StatusOr<std::vector<FoldRun>> Runs(const std::string& experiment_id);
  // Adds a PENDING run to an experiment (the final fit: fold 0); returns its id, and the new row in
  // `added` when given.
  absl::StatusOr<int64_t> AddRun(const std::string& experiment_id, int trial, int fold,
                                 FoldRun* added = nullptr, RunEvents* events = nullptr);
  absl::StatusOr<FoldRun> Run(int64_t run_id);
  // The longest-waiting PENDING run, if any.
  absl::StatusOr<std::optional<FoldRun>> NextPending();

  // Every move below, when `updated` is given and the move succeeded, writes the run's row as it
  // now is into it, so the caller's view follows the store without reading the row back. When
  // `events` is given, its events are appended in the move's transaction (RunEvents); a failed
  // append fails the move, which then leaves nothing changed.

  // PENDING -> ASSIGNED to `worker`; returns the new lease epoch.
  absl::StatusOr<int64_t> Assign(int64_t run_id, const std::string& worker,
                                 FoldRun* updated = nullptr, RunEvents* events = nullptr);
  // Moves a run on behalf of the worker holding lease `epoch`. A stale epoch is
  // FailedPrecondition (the report of a worker that came back late); so is an illegal move.
  absl::Status Transition(int64_t run_id, int64_t epoch, RunState to, const std::string& message,
                          FoldRun* updated = nullptr, RunEvents* events = nullptr);
  // ASSIGNED|RUNNING -> SUCCEEDED with its serialized FoldResult, for the holder of `epoch`.
  absl::Status Complete(int64_t run_id, int64_t epoch, const std::string& result,
                        FoldRun* updated = nullptr, RunEvents* events = nullptr);
  // The holder of `epoch` gave the run back (its child crashed): PENDING with the next attempt
  // while attempts < max_restarts, else FAILED. Returns the new state.
  // `count_attempt` false (the worker was shut down, the run did nothing wrong): PENDING again
  // with the same attempt number.
  absl::StatusOr<RunState> Retry(int64_t run_id, int64_t epoch, const std::string& message,
                                 int max_restarts, bool count_attempt = true,
                                 FoldRun* updated = nullptr, RunEvents* events = nullptr);
  // Records that the holder of `epoch` uploaded a checkpoint.
  absl::Status SetHasCheckpoint(int64_t run_id, int64_t epoch);
  // Cancels a run that has not finished, whoever holds it (a finished run stays as it is).
  absl::Status Cancel(int64_t run_id, const std::string& message, FoldRun* updated = nullptr,
                      RunEvents* events = nullptr);
  // Cancels every run of the experiment that has not finished (as Cancel) and sets every open
  // trial (state "") to `trial_state`, all in one transaction: a crash leaves all of it or none,
  // and a search of thousands of trials costs one commit. The cancelled runs' rows as they now are
  // go to `updated` when given. With `end`, the experiment's state becomes end->state with
  // `message`, and end->events are appended after the runs' events, in the same transaction (and
  // added to `events->appended` when `events` is given). Errors: NotFound (with `end`: no such
  // experiment), a failed write or append (nothing is changed then).
  absl::Status CancelExperiment(const std::string& experiment_id, const std::string& message,
                                const std::string& trial_state,
                                std::vector<FoldRun>* updated = nullptr,
                                RunEvents* events = nullptr, const ExperimentEnd* end = nullptr);
  // The lease of an ASSIGNED or RUNNING run lapsed: it is LOST, then PENDING again with the next
  // attempt while attempts < max_restarts, else FAILED. Old epochs stay fenced off.
  // `reason` says why (default: the holder's lease lapsed).
  absl::StatusOr<RunState> MarkLost(int64_t run_id, int max_restarts,
                                    const std::string& reason = "", FoldRun* updated = nullptr,
                                    RunEvents* events = nullptr);

  // Appends to the experiment's event log; returns the event's sequence number.
  absl::StatusOr<int64_t> AppendEvent(const std::string& experiment_id, const std::string& kind,
                                      const std::string& payload);
  // Appends several events in one transaction; returns the seq of the first.
  absl::StatusOr<int64_t> AppendEvents(const std::string& experiment_id,
                                       const std::vector<EventIn>& events);
  // A worker's batch for a run: checks the lease epoch (stale: FailedPrecondition), skips the
  // events whose run-local index (first_index, first_index + 1, ...) was accepted before (a
  // retried batch), appends the rest and records the index, in one transaction. Returns how many
  // were skipped and the seq of the first appended.
  struct Appended {
    int skipped = 0;
    int64_t first_seq = 0;
  };
  absl::StatusOr<Appended> AppendRunEvents(int64_t run_id, int64_t epoch, int64_t first_index,
                                           const std::vector<EventIn>& events);
  // The experiment's newest event seq (0 when it has none).
  absl::StatusOr<int64_t> LastEventSeq(const std::string& experiment_id);
  // Events with seq >= from_seq, in order, at most `limit`.
  absl::StatusOr<std::vector<Event>> ReadEvents(const std::string& experiment_id, int64_t from_seq,
                                                int limit);

  // Registers a model under its name with the next version number (never one used before, even
  // by a deleted version); returns the version.
  absl::StatusOr<int> RegisterModel(const ModelRow& model);
  // The models an experiment registered, by name and version; deleted ones only when asked.
  absl::StatusOr<std::vector<ModelRow>> Models(const std::string& experiment_id,
                                               bool include_deleted = false);

  // The model registry (server/core/model_registry.h). Deleted versions are invisible here.
  // Every version of model `name` (empty: of every model), by name then version.
  absl::StatusOr<std::vector<ModelRow>> RegisteredModels(const std::string& name);
  // One version; version 0: the newest. NotFound names the model.
  absl::StatusOr<ModelRow> RegisteredModel(const std::string& name, int version);
  // The aliases of model `name`, alias -> version, sorted by alias.
  absl::StatusOr<std::vector<std::pair<std::string, int>>> ModelAliases(const std::string& name);
  // Points `alias` of model `name` at `version` (NotFound when that version does not exist).
  absl::Status SetModelAlias(const std::string& name, const std::string& alias, int version);
  // Removes an alias; returns the version it pointed at. NotFound when there is no such alias.
  absl::StatusOr<int> DeleteModelAlias(const std::string& name, const std::string& alias);
  // Marks a version deleted and removes the aliases pointing at it, in one transaction; returns
  // those aliases. NotFound when the version does not exist (or was deleted before).
  absl::StatusOr<std::vector<std::string>> DeleteModel(const std::string& name, int version);

 private:
  absl::Status Migrate(int64_t from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int64_t> AppendLocked(const std::string& experiment_id,
                                       const std::vector<EventIn>& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets an experiment's state and message, within a transaction. NotFound: no such experiment.
  absl::Status WriteExperimentState(const std::string& experiment_id, int state,
                                    const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Registers `model` with the next version of its name, within a transaction (RegisterModel).
  absl::StatusOr<int> InsertModel(const ModelRow& model) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends `events`' events (StateEvents) within a transaction. Nothing when `events` is null.
  absl::Status AppendState(const std::string& experiment_id, StateEvents* events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends `events`' events for the moves (before, after) of one experiment's runs; within a
  // transaction. Nothing when `events` is null.
  absl::Status AppendMoved(RunEvents* events,
                           const std::vector<std::pair<const FoldRun*, const FoldRun*>>& moves)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  explicit StateStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<FoldRun> RunLocked(int64_t run_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetRun(const FoldRun& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // In one transaction: reads run `run_id`, lets `move` (absl::StatusOr<bool>(FoldRun&)) change
  // it, and when it says it moved, writes it and appends `events`' events (AppendMoved). An error
  // from `move` rolls everything back. The row as it ends goes to `updated` when given.
  template <typename Move>
  absl::Status MoveRun(int64_t run_id, FoldRun* updated, RunEvents* events, Move move)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);

  // Runs `body` between BEGIN IMMEDIATE and COMMIT (ROLLBACK when it fails).
  template <typename F, typename R = std::invoke_result_t<F>>
  R InTransaction(F body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace mal::server

#endif  // MAL_SERVER_STATE_STATE_STORE_H_
