#ifndef MAL_SERVER_STATE_STATE_STORE_H_
#define MAL_SERVER_STATE_STATE_STORE_H_

// The coordinator's durable state: experiments, fold runs with their attempts and lease epochs,
// and the per-experiment event log, in SQLite (WAL, synchronous FULL), so that whatever a call
// acknowledged survives kill -9. No gRPC here. Part of the distributed service (issue 4), which
// is not built yet: this is its storage layer.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
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
  static constexpr int kSchemaVersion = 1;

  // Opens or creates the database at `path`. A database written by a newer schema is an error.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& path);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // Creates an experiment and its trials x folds runs (PENDING) in one transaction, and returns
  // its id. A non-empty `request_id` seen before returns that experiment's id instead, so a client
  // may retry a submission whose answer it lost.
  absl::StatusOr<std::string> CreateExperiment(const std::string& request_id, const std::string& name,
                                               const std::string& spec, int trials, int folds);
  absl::StatusOr<std::string> ExperimentSpec(const std::string& experiment_id);

  absl::StatusOr<std::vector<FoldRun>> Runs(const std::string& experiment_id);
  absl::StatusOr<FoldRun> Run(int64_t run_id);
  // The longest-waiting PENDING run, if any.
  absl::StatusOr<std::optional<FoldRun>> NextPending();

  // PENDING -> ASSIGNED to `worker`; returns the new lease epoch.
  absl::StatusOr<int64_t> Assign(int64_t run_id, const std::string& worker);
  // Moves a run on behalf of the worker holding lease `epoch`. A stale epoch is
  // FailedPrecondition (the report of a worker that came back late); so is an illegal move.
  absl::Status Transition(int64_t run_id, int64_t epoch, RunState to, const std::string& message);
  // Cancels a run that has not finished, whoever holds it.
  absl::Status Cancel(int64_t run_id, const std::string& message);
  // The lease of an ASSIGNED or RUNNING run lapsed: it is LOST, then PENDING again with the next
  // attempt while attempts < max_restarts, else FAILED. Old epochs stay fenced off.
  absl::StatusOr<RunState> MarkLost(int64_t run_id, int max_restarts);

  // Appends to the experiment's event log; returns the event's sequence number.
  absl::StatusOr<int64_t> AppendEvent(const std::string& experiment_id, const std::string& kind,
                                      const std::string& payload);
  // The experiment's newest event seq (0 when it has none).
  absl::StatusOr<int64_t> LastEventSeq(const std::string& experiment_id);
  // Events with seq >= from_seq, in order, at most `limit`.
  absl::StatusOr<std::vector<Event>> ReadEvents(const std::string& experiment_id, int64_t from_seq,
                                                int limit);

 private:
  explicit StateStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<FoldRun> RunLocked(int64_t run_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SetRun(const FoldRun& run) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace mal::server

#endif  // MAL_SERVER_STATE_STATE_STORE_H_
