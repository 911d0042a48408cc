#include "server/state/state_store.h"

#include <sqlite3.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace mal::server {

namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE experiments (
  id TEXT PRIMARY KEY,
  request_id TEXT UNIQUE,
  name TEXT NOT NULL,
  spec BLOB NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE fold_runs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  experiment_id TEXT NOT NULL REFERENCES experiments(id),
  trial INTEGER NOT NULL,
  fold INTEGER NOT NULL,
  state INTEGER NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0,
  lease_epoch INTEGER NOT NULL DEFAULT 0,
  worker TEXT NOT NULL DEFAULT '',
  message TEXT NOT NULL DEFAULT '',
  updated_ms INTEGER NOT NULL,
  UNIQUE (experiment_id, trial, fold)
);
CREATE INDEX fold_runs_by_state ON fold_runs(state, updated_ms, id);
CREATE TABLE events (
  experiment_id TEXT NOT NULL REFERENCES experiments(id),
  seq INTEGER NOT NULL,
  kind TEXT NOT NULL,
  payload BLOB NOT NULL,
  time_ms INTEGER NOT NULL,
  PRIMARY KEY (experiment_id, seq)
) WITHOUT ROWID;
)sql";

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::Status SqlError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(absl::StrCat("state store: ", what, ": ", sqlite3_errmsg(db)));
}

// A prepared statement, finalised on destruction.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) stmt_ = nullptr;
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  bool ok() const { return stmt_ != nullptr; }
  Statement& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Statement& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : "";
  }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

FoldRun ReadRun(Statement& s) {
  FoldRun r;
  r.id = s.Int(0);
  r.experiment_id = s.Text(1);
  r.trial = static_cast<int>(s.Int(2));
  r.fold = static_cast<int>(s.Int(3));
  r.state = static_cast<RunState>(s.Int(4));
  r.attempt = static_cast<int>(s.Int(5));
  r.lease_epoch = s.Int(6);
  r.worker = s.Text(7);
  r.message = s.Text(8);
  return r;
}

constexpr const char* kRunColumns =
    "id, experiment_id, trial, fold, state, attempt, lease_epoch, worker, message";

bool Finished(RunState s) {
  return s == RunState::kSucceeded || s == RunState::kFailed || s == RunState::kCancelled;
}

// The moves a worker's report may make.
bool Allowed(RunState from, RunState to) {
  switch (to) {
    case RunState::kRunning: return from == RunState::kAssigned;
    case RunState::kSucceeded:
    case RunState::kFailed: return from == RunState::kAssigned || from == RunState::kRunning;
    default: return false;
  }
}

}  // namespace

const char* RunStateName(RunState state) {
  switch (state) {
    case RunState::kPending: return "PENDING";
    case RunState::kAssigned: return "ASSIGNED";
    case RunState::kRunning: return "RUNNING";
    case RunState::kSucceeded: return "SUCCEEDED";
    case RunState::kFailed: return "FAILED";
    case RunState::kCancelled: return "CANCELLED";
    case RunState::kLost: return "LOST";
  }
  return "UNKNOWN";
}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    absl::Status s = absl::UnavailableError(
        absl::StrCat(path, ": cannot open the state database: ", db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<StateStore> store(new StateStore(db));
  absl::MutexLock lock(&store->mu_);
  sqlite3_busy_timeout(db, 5000);
  RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  RETURN_IF_ERROR(store->Exec("PRAGMA foreign_keys=ON"));
  Statement version(db, "PRAGMA user_version");
  if (!version.ok() || version.Step() != SQLITE_ROW) return SqlError(db, "reading the schema version");
  const int64_t v = version.Int(0);
  if (v > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": schema version ", v, " is newer than this coordinator's ", kSchemaVersion));
  }
  if (v == 0) {
    RETURN_IF_ERROR(store->Exec("BEGIN IMMEDIATE"));
    absl::Status s = store->Exec(kSchema);
    if (s.ok()) s = store->Exec(absl::StrCat("PRAGMA user_version=", kSchemaVersion).c_str());
    if (!s.ok()) {
      (void)store->Exec("ROLLBACK");
      return s;
    }
    RETURN_IF_ERROR(store->Exec("COMMIT"));
  }
  return store;
}

StateStore::~StateStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status StateStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s = absl::InternalError(absl::StrCat("state store: ", err ? err : "error"));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> StateStore::CreateExperiment(const std::string& request_id,
                                                         const std::string& name,
                                                         const std::string& spec, int trials,
                                                         int folds) {
  if (trials < 1 || folds < 1) return absl::InvalidArgumentError("trials and folds must be >= 1");
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto body = [&]() -> absl::StatusOr<std::string> {
    if (!request_id.empty()) {
      Statement seen(db_, "SELECT id FROM experiments WHERE request_id = ?");
      seen.Bind(1, request_id);
      if (seen.Step() == SQLITE_ROW) return seen.Text(0);
    }
    Statement count(db_, "SELECT COUNT(*) FROM experiments");
    if (count.Step() != SQLITE_ROW) return SqlError(db_, "counting experiments");
    const std::string id = absl::StrCat("exp-", count.Int(0) + 1);
    const int64_t now = NowMs();
    Statement insert(db_,
                     "INSERT INTO experiments (id, request_id, name, spec, created_ms) VALUES (?, ?, ?, ?, ?)");
    insert.Bind(1, id).Bind(3, name).BindBlob(4, spec).Bind(5, now);
    // Without a request id the column stays NULL: UNIQUE allows many NULLs.
    if (!request_id.empty()) insert.Bind(2, request_id);
    if (insert.Step() != SQLITE_DONE) return SqlError(db_, "inserting the experiment");
    for (int t = 0; t < trials; ++t) {
      for (int f = 1; f <= folds; ++f) {
        Statement run(db_,
                      "INSERT INTO fold_runs (experiment_id, trial, fold, state, updated_ms) VALUES (?, ?, ?, ?, ?)");
        run.Bind(1, id).Bind(2, t).Bind(3, f).Bind(4, static_cast<int64_t>(RunState::kPending)).Bind(5, now);
        if (run.Step() != SQLITE_DONE) return SqlError(db_, "inserting fold runs");
      }
    }
    return id;
  };
  absl::StatusOr<std::string> id = body();
  if (!id.ok()) {
    (void)Exec("ROLLBACK");
    return id.status();
  }
  RETURN_IF_ERROR(Exec("COMMIT"));
  return id;
}

absl::StatusOr<std::string> StateStore::ExperimentSpec(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT spec FROM experiments WHERE id = ?");
  s.Bind(1, experiment_id);
  if (s.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("experiment ", experiment_id));
  return s.Text(0);
}

absl::StatusOr<std::vector<FoldRun>> StateStore::Runs(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, absl::StrCat("SELECT ", kRunColumns,
                                " FROM fold_runs WHERE experiment_id = ? ORDER BY trial, fold")
                       .c_str());
  s.Bind(1, experiment_id);
  std::vector<FoldRun> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(ReadRun(s));
  if (rc != SQLITE_DONE) return SqlError(db_, "listing runs");
  return out;
}

absl::StatusOr<FoldRun> StateStore::RunLocked(int64_t run_id) {
  Statement s(db_, absl::StrCat("SELECT ", kRunColumns, " FROM fold_runs WHERE id = ?").c_str());
  s.Bind(1, run_id);
  if (s.Step() != SQLITE_ROW) return absl::NotFoundError(absl::StrCat("fold run ", run_id));
  return ReadRun(s);
}

absl::StatusOr<FoldRun> StateStore::Run(int64_t run_id) {
  absl::MutexLock lock(&mu_);
  return RunLocked(run_id);
}

absl::Status StateStore::SetRun(const FoldRun& r) {
  Statement s(db_,
              "UPDATE fold_runs SET state = ?, attempt = ?, lease_epoch = ?, worker = ?, message = ?, "
              "updated_ms = ? WHERE id = ?");
  s.Bind(1, static_cast<int64_t>(r.state)).Bind(2, r.attempt).Bind(3, r.lease_epoch);
  s.Bind(4, r.worker).Bind(5, r.message).Bind(6, NowMs()).Bind(7, r.id);
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "updating a run");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<FoldRun>> StateStore::NextPending() {
  absl::MutexLock lock(&mu_);
  Statement s(db_, absl::StrCat("SELECT ", kRunColumns,
                                " FROM fold_runs WHERE state = ? ORDER BY updated_ms, id LIMIT 1")
                       .c_str());
  s.Bind(1, static_cast<int64_t>(RunState::kPending));
  const int rc = s.Step();
  if (rc == SQLITE_DONE) return std::optional<FoldRun>();
  if (rc != SQLITE_ROW) return SqlError(db_, "finding a pending run");
  return std::optional<FoldRun>(ReadRun(s));
}

absl::StatusOr<int64_t> StateStore::Assign(int64_t run_id, const std::string& worker) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(FoldRun r, RunLocked(run_id));
  if (r.state != RunState::kPending) {
    return absl::FailedPreconditionError(
        absl::StrCat("fold run ", run_id, " is ", RunStateName(r.state), ", not PENDING"));
  }
  r.state = RunState::kAssigned;
  r.worker = worker;
  ++r.lease_epoch;
  RETURN_IF_ERROR(SetRun(r));
  return r.lease_epoch;
}

absl::Status StateStore::Transition(int64_t run_id, int64_t epoch, RunState to,
                                    const std::string& message) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(FoldRun r, RunLocked(run_id));
  if (epoch != r.lease_epoch) {
    return absl::FailedPreconditionError(absl::StrCat("fold run ", run_id, ": stale lease epoch ",
                                                      epoch, " (current ", r.lease_epoch, ")"));
  }
  if (!Allowed(r.state, to)) {
    return absl::FailedPreconditionError(absl::StrCat("fold run ", run_id, ": cannot go from ",
                                                      RunStateName(r.state), " to ", RunStateName(to)));
  }
  r.state = to;
  r.message = message;
  return SetRun(r);
}

absl::Status StateStore::Cancel(int64_t run_id, const std::string& message) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(FoldRun r, RunLocked(run_id));
  if (Finished(r.state)) return absl::OkStatus();
  r.state = RunState::kCancelled;
  r.message = message;
  ++r.lease_epoch;  // whoever ran it can no longer report
  return SetRun(r);
}

absl::StatusOr<RunState> StateStore::MarkLost(int64_t run_id, int max_restarts) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(FoldRun r, RunLocked(run_id));
  if (r.state != RunState::kAssigned && r.state != RunState::kRunning) {
    return absl::FailedPreconditionError(
        absl::StrCat("fold run ", run_id, " is ", RunStateName(r.state), ": no lease to lose"));
  }
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  r.state = RunState::kLost;
  r.message = absl::StrCat("lease of ", r.worker, " lapsed");
  ++r.lease_epoch;
  absl::Status s = SetRun(r);
  if (s.ok()) {
    if (r.attempt < max_restarts) {
      ++r.attempt;
      r.state = RunState::kPending;
    } else {
      r.state = RunState::kFailed;
      r.message = absl::StrCat(r.message, "; gave up after ", r.attempt + 1, " attempts");
    }
    r.worker.clear();
    s = SetRun(r);
  }
  if (!s.ok()) {
    (void)Exec("ROLLBACK");
    return s;
  }
  RETURN_IF_ERROR(Exec("COMMIT"));
  return r.state;
}

absl::StatusOr<int64_t> StateStore::AppendEvent(const std::string& experiment_id,
                                                const std::string& kind,
                                                const std::string& payload) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto body = [&]() -> absl::StatusOr<int64_t> {
    Statement last(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE experiment_id = ?");
    last.Bind(1, experiment_id);
    if (last.Step() != SQLITE_ROW) return SqlError(db_, "reading the last event");
    const int64_t seq = last.Int(0) + 1;
    Statement insert(db_,
                     "INSERT INTO events (experiment_id, seq, kind, payload, time_ms) VALUES (?, ?, ?, ?, ?)");
    insert.Bind(1, experiment_id).Bind(2, seq).Bind(3, kind).BindBlob(4, payload).Bind(5, NowMs());
    if (insert.Step() != SQLITE_DONE) return SqlError(db_, "appending an event");
    return seq;
  };
  absl::StatusOr<int64_t> seq = body();
  if (!seq.ok()) {
    (void)Exec("ROLLBACK");
    return seq.status();
  }
  RETURN_IF_ERROR(Exec("COMMIT"));
  return seq;
}

absl::StatusOr<int64_t> StateStore::LastEventSeq(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE experiment_id = ?");
  s.Bind(1, experiment_id);
  if (s.Step() != SQLITE_ROW) return SqlError(db_, "reading the last event");
  return s.Int(0);
}

absl::StatusOr<std::vector<Event>> StateStore::ReadEvents(const std::string& experiment_id,
                                                          int64_t from_seq, int limit) {
  absl::MutexLock lock(&mu_);
  Statement s(db_,
              "SELECT seq, kind, payload, time_ms FROM events WHERE experiment_id = ? AND seq >= ? "
              "ORDER BY seq LIMIT ?");
  s.Bind(1, experiment_id).Bind(2, from_seq).Bind(3, limit);
  std::vector<Event> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    out.push_back(Event{s.Int(0), s.Text(1), s.Text(2), s.Int(3)});
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "reading events");
  return out;
}

}  // namespace mal::server
