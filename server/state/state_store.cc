// Over 400 lines on purpose: one class over one SQLite database. Its schema, migrations and
// statements belong together (a column renamed in one place must be renamed in all).

#include "server/state/state_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

// Version 1 -> 2: experiment state and priority, trials, run results, event dedup, models.
constexpr const char* kMigrate2 = R"sql(
ALTER TABLE experiments ADD COLUMN state INTEGER NOT NULL DEFAULT 1;
ALTER TABLE experiments ADD COLUMN message TEXT NOT NULL DEFAULT '';
ALTER TABLE experiments ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fold_runs ADD COLUMN result BLOB NOT NULL DEFAULT '';
ALTER TABLE fold_runs ADD COLUMN reported INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fold_runs ADD COLUMN has_checkpoint INTEGER NOT NULL DEFAULT 0;
CREATE TABLE trials (
  experiment_id TEXT NOT NULL REFERENCES experiments(id),
  trial INTEGER NOT NULL,
  params TEXT NOT NULL,
  seed INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT '',
  message TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (experiment_id, trial)
) WITHOUT ROWID;
CREATE TABLE models (
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  experiment_id TEXT NOT NULL REFERENCES experiments(id),
  trial INTEGER NOT NULL,
  fold INTEGER NOT NULL,
  test_mean_f1 REAL NOT NULL,
  artifact TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_ms INTEGER NOT NULL,
  PRIMARY KEY (name, version)
);
)sql";

// Version 2 -> 3: the model registry's aliases, and deleted versions kept as tombstones so that
// their numbers are never reused (a cache keyed by NAME:VERSION stays right).
constexpr const char* kMigrate3 = R"sql(
ALTER TABLE models ADD COLUMN deleted_ms INTEGER NOT NULL DEFAULT 0;
CREATE TABLE model_aliases (
  name TEXT NOT NULL,
  alias TEXT NOT NULL,
  version INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  PRIMARY KEY (name, alias),
  FOREIGN KEY (name, version) REFERENCES models(name, version)
) WITHOUT ROWID;
)sql";

// Version 3 -> 4: deleted experiments. The row stays (ids are never reused, and model tombstones
// refer to it) with its spec and request id cleared; its runs, trials and events are removed.
constexpr const char* kMigrate4 = R"sql(
ALTER TABLE experiments ADD COLUMN deleted_ms INTEGER NOT NULL DEFAULT 0;
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
  Statement& BindReal(int i, double v) {
    sqlite3_bind_double(stmt_, i, v);
    return *this;
  }
  double Real(int col) { return sqlite3_column_double(stmt_, col); }
  Statement& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int Step() { return sqlite3_step(stmt_); }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  sqlite3_stmt* raw() { return stmt_; }
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
  r.result = s.Text(9);
  r.reported = s.Int(10);
  r.has_checkpoint = s.Int(11) != 0;
  return r;
}

constexpr const char* kRunColumns =
    "id, experiment_id, trial, fold, state, attempt, lease_epoch, worker, message, result, "
    "reported, "
    "has_checkpoint";

// The moves a worker's report may make.
bool Allowed(RunState from, RunState to) {
  switch (to) {
    case RunState::kRunning:
      return from == RunState::kAssigned;
    case RunState::kSucceeded:
    case RunState::kFailed:
      return from == RunState::kAssigned || from == RunState::kRunning;
    default:
      return false;
  }
}

}  // namespace

absl::Status CheckLeaseEpoch(const FoldRun& r, int64_t epoch) {
  if (epoch == r.lease_epoch) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("fold run ", r.id, ": stale lease epoch ",
                                                    epoch, " (current ", r.lease_epoch, ")"));
}

bool IsFinished(RunState s) {
  return s == RunState::kSucceeded || s == RunState::kFailed || s == RunState::kCancelled;
}

bool IsHeld(RunState s) { return s == RunState::kAssigned || s == RunState::kRunning; }

const char* RunStateName(RunState state) {
  switch (state) {
    case RunState::kPending:
      return "PENDING";
    case RunState::kAssigned:
      return "ASSIGNED";
    case RunState::kRunning:
      return "RUNNING";
    case RunState::kSucceeded:
      return "SUCCEEDED";
    case RunState::kFailed:
      return "FAILED";
    case RunState::kCancelled:
      return "CANCELLED";
    case RunState::kLost:
      return "LOST";
  }
  return "UNKNOWN";
}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    absl::Status s = absl::UnavailableError(absl::StrCat(
        path, ": cannot open the state database: ", db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<StateStore> store(new StateStore(db));
  absl::MutexLock lock(&store->mu_);
  sqlite3_busy_timeout(db, 5000);
  // Errors name the file ("file is not a database" alone did not say which).
  auto named = [&path](absl::Status s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    if (absl::Status s = store->Exec(pragma); !s.ok()) return named(s);
  }
  // Damaged pages (a disk fault, a copy taken mid-write without its -wal file) are otherwise
  // found only by the read that meets them, as an INTERNAL error of that one call; checked before
  // a migration writes to the file. SQLite's quick_check reads every page once (about a second
  // per GB).
  {
    Statement check(db, "PRAGMA quick_check(1)");
    const int rc = check.ok() ? check.Step() : SQLITE_ERROR;
    const std::string verdict = rc == SQLITE_ROW ? check.Text(0) : std::string(sqlite3_errmsg(db));
    if (verdict != "ok") {
      return absl::DataLossError(absl::StrCat(
          path, ": the state database is damaged (SQLite's quick_check: ", verdict,
          "); restore it from a backup (docs/service.md, \"Durability and failures\")"));
    }
  }
  Statement version(db, "PRAGMA user_version");
  if (!version.ok() || version.Step() != SQLITE_ROW)
    return named(SqlError(db, "reading the schema version"));
  const int64_t v = version.Int(0);
  if (v > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": schema version ", v, " is newer than this coordinator's ", kSchemaVersion));
  }
  if (v < kSchemaVersion) {
    if (absl::Status s = store->Migrate(v); !s.ok()) return named(s);
  }
  return store;
}

// Each step and its version number commit together, so a crash mid-migration leaves the old
// version intact.
absl::Status StateStore::Migrate(int64_t from) {
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    if (from < 1) RETURN_IF_ERROR(Exec(kSchema));
    if (from < 2) RETURN_IF_ERROR(Exec(kMigrate2));
    if (from < 3) RETURN_IF_ERROR(Exec(kMigrate3));
    if (from < 4) RETURN_IF_ERROR(Exec(kMigrate4));
    return Exec(absl::StrCat("PRAGMA user_version=", kSchemaVersion).c_str());
  });
}

template <typename F, typename R>
R StateStore::InTransaction(F body) {
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto result = body();
  if (!result.ok()) {
    (void)Exec("ROLLBACK");
    return result;
  }
  if (absl::Status s = Exec("COMMIT"); !s.ok()) {
    (void)Exec("ROLLBACK");
    return s;
  }
  return result;
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
  ExperimentRow e;
  e.request_id = request_id;
  e.name = name;
  e.spec = spec;
  std::vector<TrialRow> rows(std::max(trials, 0));
  for (int t = 0; t < trials; ++t) rows[t].trial = t;
  std::vector<int> numbers;
  for (int f = 1; f <= folds; ++f) numbers.push_back(f);
  bool existing = false;
  return CreateExperiment(e, rows, numbers, &existing);
}

absl::StatusOr<std::string> StateStore::CreateExperiment(const ExperimentRow& e,
                                                         const std::vector<TrialRow>& trials,
                                                         const std::vector<int>& folds,
                                                         bool* existing, std::vector<FoldRun>* runs,
                                                         const std::vector<EventIn>& first_events) {
  if (trials.empty() || folds.empty())
    return absl::InvalidArgumentError("trials and folds must not be empty");
  *existing = false;
  if (runs != nullptr) runs->clear();
  absl::MutexLock lock(&mu_);
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<std::string> {
    if (!e.request_id.empty()) {
      Statement seen(db_, "SELECT id FROM experiments WHERE request_id = ?");
      seen.Bind(1, e.request_id);
      if (seen.Step() == SQLITE_ROW) {
        *existing = true;
        return seen.Text(0);
      }
    }
    Statement count(db_, "SELECT COUNT(*) FROM experiments");
    if (count.Step() != SQLITE_ROW) return SqlError(db_, "counting experiments");
    const std::string id = absl::StrCat("exp-", count.Int(0) + 1);
    const int64_t now = NowMs();
    Statement insert(db_,
                     "INSERT INTO experiments (id, request_id, name, spec, created_ms, state, "
                     "message, priority) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    insert.Bind(1, id).Bind(3, e.name).BindBlob(4, e.spec).Bind(5, now).Bind(6, e.state);
    insert.Bind(7, e.message).Bind(8, e.priority);
    // Without a request id the column stays NULL: UNIQUE allows many NULLs.
    if (!e.request_id.empty()) insert.Bind(2, e.request_id);
    if (insert.Step() != SQLITE_DONE) return SqlError(db_, "inserting the experiment");
    for (const TrialRow& t : trials) {
      Statement trial(
          db_, "INSERT INTO trials (experiment_id, trial, params, seed) VALUES (?, ?, ?, ?)");
      trial.Bind(1, id).Bind(2, t.trial).Bind(3, t.params).Bind(4, t.seed);
      if (trial.Step() != SQLITE_DONE) return SqlError(db_, "inserting trials");
      for (int f : folds) {
        Statement run(db_,
                      "INSERT INTO fold_runs (experiment_id, trial, fold, state, updated_ms) "
                      "VALUES (?, ?, ?, ?, ?)");
        run.Bind(1, id)
            .Bind(2, t.trial)
            .Bind(3, f)
            .Bind(4, static_cast<int64_t>(RunState::kPending))
            .Bind(5, now);
        if (run.Step() != SQLITE_DONE) return SqlError(db_, "inserting fold runs");
        if (runs != nullptr) {
          FoldRun r;
          r.id = sqlite3_last_insert_rowid(db_);
          r.experiment_id = id;
          r.trial = t.trial;
          r.fold = f;
          runs->push_back(std::move(r));
        }
      }
    }
    if (!first_events.empty()) RETURN_IF_ERROR(AppendLocked(id, first_events).status());
    return id;
  });
}

absl::StatusOr<std::vector<ExperimentRow>> StateStore::Experiments() {
  absl::MutexLock lock(&mu_);
  Statement s(
      db_,
      "SELECT id, COALESCE(request_id, ''), name, spec, state, message, priority, created_ms "
      "FROM experiments WHERE deleted_ms = 0 ORDER BY created_ms, rowid");
  std::vector<ExperimentRow> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    ExperimentRow e;
    e.id = s.Text(0);
    e.request_id = s.Text(1);
    e.name = s.Text(2);
    e.spec = s.Text(3);
    e.state = static_cast<int>(s.Int(4));
    e.message = s.Text(5);
    e.priority = static_cast<int>(s.Int(6));
    e.created_ms = s.Int(7);
    out.push_back(std::move(e));
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "listing experiments");
  return out;
}

absl::StatusOr<int64_t> StateStore::DeleteExperiment(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<int64_t> {
    Statement find(db_, "SELECT deleted_ms FROM experiments WHERE id = ?");
    find.Bind(1, experiment_id);
    if (find.Step() != SQLITE_ROW)
      return absl::NotFoundError(absl::StrCat("no experiment ", experiment_id));
    if (find.Int(0) != 0)
      return absl::NotFoundError(absl::StrCat("experiment ", experiment_id, " was deleted"));
    Statement models(db_,
                     "SELECT name || ':' || version FROM models WHERE experiment_id = ? AND "
                     "deleted_ms = 0 ORDER BY name, version");
    models.Bind(1, experiment_id);
    std::vector<std::string> live;
    while (models.Step() == SQLITE_ROW) live.push_back(models.Text(0));
    if (!live.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "experiment ", experiment_id, " has registered model versions (",
          absl::StrJoin(live, ", "), "); delete them first (malctl models rm ", live[0], ")"));
    }
    for (const char* sql : {"DELETE FROM events WHERE experiment_id = ?",
                            "DELETE FROM fold_runs WHERE experiment_id = ?",
                            "DELETE FROM trials WHERE experiment_id = ?"}) {
      Statement del(db_, sql);
      del.Bind(1, experiment_id);
      if (del.Step() != SQLITE_DONE) return SqlError(db_, sql);
    }
    const int64_t now = NowMs();
    Statement mark(db_,
                   "UPDATE experiments SET deleted_ms = ?, spec = x'', request_id = NULL, "
                   "message = '' WHERE id = ?");
    mark.Bind(1, now).Bind(2, experiment_id);
    if (mark.Step() != SQLITE_DONE) return SqlError(db_, "marking the experiment deleted");
    return now;
  });
}

absl::StatusOr<std::string> StateStore::ExperimentByRequestId(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT id FROM experiments WHERE request_id = ?");
  s.Bind(1, request_id);
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return s.Text(0);
  if (rc != SQLITE_DONE) return SqlError(db_, "looking up a request id");
  return std::string();
}

absl::StatusOr<std::vector<std::string>> StateStore::DeletedExperiments() {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT id FROM experiments WHERE deleted_ms != 0 ORDER BY rowid");
  std::vector<std::string> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(s.Text(0));
  if (rc != SQLITE_DONE) return SqlError(db_, "listing deleted experiments");
  return out;
}

absl::Status StateStore::AppendState(const std::string& experiment_id, StateEvents* events) {
  if (events == nullptr) return absl::OkStatus();
  events->appended.clear();
  events->first_seq = 0;
  if (events->events.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(events->first_seq, AppendLocked(experiment_id, events->events));
  events->appended = events->events;
  return absl::OkStatus();
}

absl::Status StateStore::WriteExperimentState(const std::string& experiment_id, int state,
                                              const std::string& message) {
  Statement s(db_, "UPDATE experiments SET state = ?, message = ? WHERE id = ?");
  s.Bind(1, state).Bind(2, message).Bind(3, experiment_id);
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "updating an experiment");
  if (sqlite3_changes(db_) == 0)
    return absl::NotFoundError(absl::StrCat("experiment ", experiment_id));
  return absl::OkStatus();
}

absl::Status StateStore::SetExperimentState(const std::string& experiment_id, int state,
                                            const std::string& message, StateEvents* events,
                                            const std::vector<ModelRow>& models) {
  absl::MutexLock lock(&mu_);
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    for (const ModelRow& m : models) RETURN_IF_ERROR(InsertModel(m).status());
    RETURN_IF_ERROR(WriteExperimentState(experiment_id, state, message));
    return AppendState(experiment_id, events);
  });
}

absl::StatusOr<std::vector<TrialRow>> StateStore::Trials(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_,
              "SELECT trial, params, seed, state, message FROM trials WHERE experiment_id = ? "
              "ORDER BY trial");
  s.Bind(1, experiment_id);
  std::vector<TrialRow> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    out.push_back(TrialRow{static_cast<int>(s.Int(0)), s.Text(1), s.Int(2), s.Text(3), s.Text(4)});
  }
  if (rc != SQLITE_DONE) return SqlError(db_, "listing trials");
  return out;
}

absl::Status StateStore::SetTrialState(const std::string& experiment_id, int trial,
                                       const std::string& state, const std::string& message,
                                       StateEvents* events) {
  absl::MutexLock lock(&mu_);
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    Statement s(db_,
                "UPDATE trials SET state = ?, message = ? WHERE experiment_id = ? AND trial = ?");
    s.Bind(1, state).Bind(2, message).Bind(3, experiment_id).Bind(4, trial);
    // No row for an experiment written by schema 1 (its trials are a function of the spec, not
    // stored): the events are appended all the same.
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "updating a trial");
    return AppendState(experiment_id, events);
  });
}

absl::StatusOr<int64_t> StateStore::ExperimentCount() {
  absl::MutexLock lock(&mu_);
  Statement count(db_, "SELECT COUNT(*) FROM experiments");
  if (count.Step() != SQLITE_ROW) return SqlError(db_, "counting experiments");
  return count.Int(0);
}

absl::StatusOr<std::string> StateStore::ExperimentSpec(const std::string& experiment_id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT spec FROM experiments WHERE id = ?");
  s.Bind(1, experiment_id);
  if (s.Step() != SQLITE_ROW)
    return absl::NotFoundError(absl::StrCat("experiment ", experiment_id));
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

absl::StatusOr<int64_t> StateStore::AddRun(const std::string& experiment_id, int trial, int fold,
                                           FoldRun* added, RunEvents* events) {
  absl::MutexLock lock(&mu_);
  FoldRun r;
  RETURN_IF_ERROR(InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    Statement run(
        db_,
        "INSERT INTO fold_runs (experiment_id, trial, fold, state, updated_ms) VALUES (?, "
        "?, ?, ?, ?)");
    run.Bind(1, experiment_id)
        .Bind(2, trial)
        .Bind(3, fold)
        .Bind(4, static_cast<int64_t>(RunState::kPending));
    run.Bind(5, NowMs());
    if (run.Step() != SQLITE_DONE) return SqlError(db_, "adding a run");
    r.id = static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
    r.experiment_id = experiment_id;
    r.trial = trial;
    r.fold = fold;
    FoldRun none;
    none.id = r.id;
    none.experiment_id = experiment_id;
    return AppendMoved(events, {{&none, &r}});
  }));
  if (added != nullptr) *added = r;
  return r.id;
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
  Statement s(
      db_,
      "UPDATE fold_runs SET state = ?, attempt = ?, lease_epoch = ?, worker = ?, message = ?, "
      "updated_ms = ?, result = ?, reported = ?, has_checkpoint = ? WHERE id = ?");
  s.Bind(1, static_cast<int64_t>(r.state)).Bind(2, r.attempt).Bind(3, r.lease_epoch);
  s.Bind(4, r.worker).Bind(5, r.message).Bind(6, NowMs()).BindBlob(7, r.result);
  s.Bind(8, r.reported).Bind(9, r.has_checkpoint ? 1 : 0).Bind(10, r.id);
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

namespace {
// After an attempt that failed or whose lease lapsed: PENDING with the next attempt while
// attempts < max_restarts, else FAILED, its message saying so.
void NextAttemptOrGiveUp(FoldRun& r, int max_restarts) {
  if (r.attempt < max_restarts) {
    ++r.attempt;
    r.state = RunState::kPending;
  } else {
    r.state = RunState::kFailed;
    r.message = absl::StrCat(r.message, "; gave up after ", r.attempt + 1, " attempts");
  }
}
}  // namespace

template <typename Move>
absl::Status StateStore::MoveRun(int64_t run_id, FoldRun* updated, RunEvents* events, Move move) {
  if (events != nullptr) {
    events->appended.clear();
    events->first_seq = 0;
  }
  FoldRun r;
  RETURN_IF_ERROR(InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    ASSIGN_OR_RETURN(r, RunLocked(run_id));
    const FoldRun before = r;
    ASSIGN_OR_RETURN(bool moved, move(r));
    if (!moved) return absl::OkStatus();
    RETURN_IF_ERROR(SetRun(r));
    return AppendMoved(events, {{&before, &r}});
  }));
  if (updated != nullptr) *updated = std::move(r);
  return absl::OkStatus();
}

absl::Status StateStore::AppendMoved(
    RunEvents* events, const std::vector<std::pair<const FoldRun*, const FoldRun*>>& moves) {
  if (events == nullptr) return absl::OkStatus();
  events->appended.clear();
  events->first_seq = 0;
  if (!events->make || moves.empty()) return absl::OkStatus();
  std::vector<EventIn> all;
  for (const auto& [before, after] : moves) {
    std::vector<EventIn> some = events->make(*before, *after);
    for (EventIn& e : some) all.push_back(std::move(e));
  }
  if (all.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(events->first_seq, AppendLocked(moves.front().second->experiment_id, all));
  events->appended = std::move(all);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> StateStore::Assign(int64_t run_id, const std::string& worker,
                                           FoldRun* updated, RunEvents* events) {
  absl::MutexLock lock(&mu_);
  FoldRun r;
  RETURN_IF_ERROR(MoveRun(run_id, &r, events, [&](FoldRun& r) -> absl::StatusOr<bool> {
    if (r.state != RunState::kPending) {
      return absl::FailedPreconditionError(
          absl::StrCat("fold run ", run_id, " is ", RunStateName(r.state), ", not PENDING"));
    }
    r.state = RunState::kAssigned;
    r.worker = worker;
    r.reported = 0;
    ++r.lease_epoch;
    return true;
  }));
  if (updated != nullptr) *updated = r;
  return r.lease_epoch;
}

absl::Status StateStore::Transition(int64_t run_id, int64_t epoch, RunState to,
                                    const std::string& message, FoldRun* updated,
                                    RunEvents* events) {
  absl::MutexLock lock(&mu_);
  return MoveRun(run_id, updated, events, [&](FoldRun& r) -> absl::StatusOr<bool> {
    RETURN_IF_ERROR(CheckLeaseEpoch(r, epoch));
    if (!Allowed(r.state, to)) {
      return absl::FailedPreconditionError(absl::StrCat("fold run ", run_id, ": cannot go from ",
                                                        RunStateName(r.state), " to ",
                                                        RunStateName(to)));
    }
    r.state = to;
    r.message = message;
    return true;
  });
}

absl::Status StateStore::Complete(int64_t run_id, int64_t epoch, const std::string& result,
                                  FoldRun* updated, RunEvents* events) {
  absl::MutexLock lock(&mu_);
  return MoveRun(run_id, updated, events, [&](FoldRun& r) -> absl::StatusOr<bool> {
    RETURN_IF_ERROR(CheckLeaseEpoch(r, epoch));
    if (!Allowed(r.state, RunState::kSucceeded)) {
      return absl::FailedPreconditionError(
          absl::StrCat("fold run ", run_id, " is ", RunStateName(r.state), ": cannot complete"));
    }
    r.state = RunState::kSucceeded;
    r.result = result;
    r.message.clear();
    return true;
  });
}

absl::StatusOr<RunState> StateStore::Retry(int64_t run_id, int64_t epoch,
                                           const std::string& message, int max_restarts,
                                           bool count_attempt, FoldRun* updated,
                                           RunEvents* events) {
  absl::MutexLock lock(&mu_);
  FoldRun r;
  RETURN_IF_ERROR(MoveRun(run_id, &r, events, [&](FoldRun& r) -> absl::StatusOr<bool> {
    RETURN_IF_ERROR(CheckLeaseEpoch(r, epoch));
    if (r.state != RunState::kAssigned && r.state != RunState::kRunning) {
      return absl::FailedPreconditionError(
          absl::StrCat("fold run ", run_id, " is ", RunStateName(r.state), ": nothing to retry"));
    }
    ++r.lease_epoch;
    r.worker.clear();
    r.message = message;
    if (count_attempt) {
      NextAttemptOrGiveUp(r, max_restarts);
    } else {
      r.state = RunState::kPending;
    }
    return true;
  }));
  if (updated != nullptr) *updated = r;
  return r.state;
}

absl::Status StateStore::SetHasCheckpoint(int64_t run_id, int64_t epoch) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(FoldRun r, RunLocked(run_id));
  RETURN_IF_ERROR(CheckLeaseEpoch(r, epoch));
  r.has_checkpoint = true;
  return SetRun(r);
}

namespace {
// The row of a run cancelled with `message`: its lease epoch moves on, so whoever ran it can no
// longer report.
void MarkCancelled(FoldRun& r, const std::string& message) {
  r.state = RunState::kCancelled;
  r.message = message;
  ++r.lease_epoch;
}
}  // namespace

absl::Status StateStore::Cancel(int64_t run_id, const std::string& message, FoldRun* updated,
                                RunEvents* events) {
  absl::MutexLock lock(&mu_);
  return MoveRun(run_id, updated, events, [&](FoldRun& r) -> absl::StatusOr<bool> {
    if (IsFinished(r.state)) return false;  // stays as it is, without events
    MarkCancelled(r, message);
    return true;
  });
}

absl::Status StateStore::CancelExperiment(const std::string& experiment_id,
                                          const std::string& message,
                                          const std::string& trial_state,
                                          std::vector<FoldRun>* updated, RunEvents* events,
                                          const ExperimentEnd* end) {
  absl::MutexLock lock(&mu_);
  std::vector<FoldRun> cancelled;
  RETURN_IF_ERROR(InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    std::vector<FoldRun> before;
    Statement runs(
        db_,
        absl::StrCat("SELECT ", kRunColumns, " FROM fold_runs WHERE experiment_id = ?").c_str());
    runs.Bind(1, experiment_id);
    int rc;
    while ((rc = runs.Step()) == SQLITE_ROW) {
      FoldRun r = ReadRun(runs);
      if (IsFinished(r.state)) continue;
      before.push_back(r);
      MarkCancelled(r, message);
      cancelled.push_back(std::move(r));
    }
    if (rc != SQLITE_DONE) return SqlError(db_, "listing runs to cancel");
    for (const FoldRun& r : cancelled) RETURN_IF_ERROR(SetRun(r));
    Statement trials(
        db_, "UPDATE trials SET state = ?, message = ? WHERE experiment_id = ? AND state = ''");
    trials.Bind(1, trial_state).Bind(2, message).Bind(3, experiment_id);
    if (trials.Step() != SQLITE_DONE) return SqlError(db_, "cancelling trials");
    std::vector<std::pair<const FoldRun*, const FoldRun*>> moves;
    for (size_t i = 0; i < cancelled.size(); ++i) moves.emplace_back(&before[i], &cancelled[i]);
    RETURN_IF_ERROR(AppendMoved(events, moves));
    if (end == nullptr) return absl::OkStatus();
    RETURN_IF_ERROR(WriteExperimentState(experiment_id, end->state, message));
    if (end->events.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(const int64_t first, AppendLocked(experiment_id, end->events));
    if (events != nullptr) {
      if (events->first_seq == 0) events->first_seq = first;
      events->appended.insert(events->appended.end(), end->events.begin(), end->events.end());
    }
    return absl::OkStatus();
  }));
  if (updated != nullptr) *updated = std::move(cancelled);
  return absl::OkStatus();
}

absl::StatusOr<RunState> StateStore::MarkLost(int64_t run_id, int max_restarts,
                                              const std::string& reason, FoldRun* updated,
                                              RunEvents* events) {
  absl::MutexLock lock(&mu_);
  FoldRun r;
  // The LOST row is written too (its updated_ms), then the next one; `make` sees the row as it
  // was before (the holder) and as it ends (PENDING or FAILED).
  RETURN_IF_ERROR(MoveRun(
      run_id, &r, events, [&](FoldRun& r) ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<bool> {
        if (r.state != RunState::kAssigned && r.state != RunState::kRunning) {
          return absl::FailedPreconditionError(absl::StrCat(
              "fold run ", run_id, " is ", RunStateName(r.state), ": no lease to lose"));
        }
        r.state = RunState::kLost;
        r.message = reason.empty() ? absl::StrCat("lease of ", r.worker, " lapsed") : reason;
        ++r.lease_epoch;
        RETURN_IF_ERROR(SetRun(r));
        NextAttemptOrGiveUp(r, max_restarts);
        r.worker.clear();
        return true;
      }));
  if (updated != nullptr) *updated = r;
  return r.state;
}

absl::StatusOr<int64_t> StateStore::AppendLocked(const std::string& experiment_id,
                                                 const std::vector<EventIn>& events) {
  Statement last(db_, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE experiment_id = ?");
  last.Bind(1, experiment_id);
  if (last.Step() != SQLITE_ROW) return SqlError(db_, "reading the last event");
  const int64_t first = last.Int(0) + 1;
  const int64_t now = NowMs();
  Statement insert(
      db_,
      "INSERT INTO events (experiment_id, seq, kind, payload, time_ms) VALUES (?, ?, ?, ?, ?)");
  for (size_t i = 0; i < events.size(); ++i) {
    sqlite3_reset(insert.raw());
    insert.Bind(1, experiment_id).Bind(2, first + static_cast<int64_t>(i)).Bind(3, events[i].kind);
    insert.BindBlob(4, events[i].payload).Bind(5, now);
    if (insert.Step() != SQLITE_DONE) return SqlError(db_, "appending an event");
  }
  return first;
}

absl::StatusOr<int64_t> StateStore::AppendEvent(const std::string& experiment_id,
                                                const std::string& kind,
                                                const std::string& payload) {
  return AppendEvents(experiment_id, {EventIn{kind, payload}});
}

absl::StatusOr<int64_t> StateStore::AppendEvents(const std::string& experiment_id,
                                                 const std::vector<EventIn>& events) {
  absl::MutexLock lock(&mu_);
  return InTransaction(
      [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return AppendLocked(experiment_id, events); });
}

absl::StatusOr<StateStore::Appended> StateStore::AppendRunEvents(
    int64_t run_id, int64_t epoch, int64_t first_index, const std::vector<EventIn>& events) {
  absl::MutexLock lock(&mu_);
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<Appended> {
    ASSIGN_OR_RETURN(FoldRun r, RunLocked(run_id));
    RETURN_IF_ERROR(CheckLeaseEpoch(r, epoch));
    if (r.state != RunState::kAssigned && r.state != RunState::kRunning) {
      return absl::FailedPreconditionError(absl::StrCat(
          "fold run ", run_id, " is ", RunStateName(r.state), ": takes no more events"));
    }
    if (first_index < 1 || first_index > r.reported + 1) {
      return absl::InvalidArgumentError(absl::StrCat("fold run ", run_id, ": events from index ",
                                                     first_index, " leave a gap after ",
                                                     r.reported));
    }
    Appended out;
    out.skipped = static_cast<int>(
        std::min<int64_t>(r.reported + 1 - first_index, static_cast<int64_t>(events.size())));
    if (out.skipped == static_cast<int>(events.size())) return out;
    const std::vector<EventIn> fresh(events.begin() + out.skipped, events.end());
    ASSIGN_OR_RETURN(out.first_seq, AppendLocked(r.experiment_id, fresh));
    r.reported = first_index + static_cast<int64_t>(events.size()) - 1;
    RETURN_IF_ERROR(SetRun(r));
    return out;
  });
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

absl::StatusOr<int> StateStore::RegisterModel(const ModelRow& m) {
  absl::MutexLock lock(&mu_);
  return InTransaction(
      [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<int> { return InsertModel(m); });
}

absl::StatusOr<int> StateStore::InsertModel(const ModelRow& m) {
  Statement last(db_, "SELECT COALESCE(MAX(version), 0) FROM models WHERE name = ?");
  last.Bind(1, m.name);
  if (last.Step() != SQLITE_ROW) return SqlError(db_, "reading model versions");
  const int version = static_cast<int>(last.Int(0)) + 1;
  Statement s(
      db_,
      "INSERT INTO models (name, version, experiment_id, trial, fold, test_mean_f1, artifact, "
      "metadata, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
  s.Bind(1, m.name).Bind(2, version).Bind(3, m.experiment_id).Bind(4, m.trial).Bind(5, m.fold);
  s.BindReal(6, m.test_mean_f1).Bind(7, m.artifact).Bind(8, m.metadata).Bind(9, NowMs());
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "registering a model");
  return version;
}

namespace {

constexpr const char* kModelColumns =
    "SELECT name, version, experiment_id, trial, fold, test_mean_f1, artifact, metadata, "
    "created_ms FROM models ";

// Every row `s` (selecting kModelColumns) returns.
absl::StatusOr<std::vector<ModelRow>> ReadModelRows(sqlite3* db, Statement& s) {
  std::vector<ModelRow> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    ModelRow m;
    m.name = s.Text(0);
    m.version = static_cast<int>(s.Int(1));
    m.experiment_id = s.Text(2);
    m.trial = static_cast<int>(s.Int(3));
    m.fold = static_cast<int>(s.Int(4));
    m.test_mean_f1 = s.Real(5);
    m.artifact = s.Text(6);
    m.metadata = s.Text(7);
    m.created_ms = s.Int(8);
    out.push_back(std::move(m));
  }
  if (rc != SQLITE_DONE) return SqlError(db, "listing models");
  return out;
}

}  // namespace

absl::StatusOr<std::vector<ModelRow>> StateStore::Models(const std::string& experiment_id,
                                                         bool include_deleted) {
  absl::MutexLock lock(&mu_);
  Statement s(db_,
              absl::StrCat(kModelColumns, "WHERE experiment_id = ?",
                           include_deleted ? "" : " AND deleted_ms = 0", " ORDER BY name, version")
                  .c_str());
  s.Bind(1, experiment_id);
  return ReadModelRows(db_, s);
}

absl::StatusOr<std::vector<ModelRow>> StateStore::RegisteredModels(const std::string& name) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, absl::StrCat(kModelColumns, "WHERE deleted_ms = 0 AND (? = '' OR name = ?) ",
                                "ORDER BY name, version")
                       .c_str());
  s.Bind(1, name).Bind(2, name);
  return ReadModelRows(db_, s);
}

absl::StatusOr<ModelRow> StateStore::RegisteredModel(const std::string& name, int version) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, absl::StrCat(kModelColumns,
                                "WHERE deleted_ms = 0 AND name = ? AND (? = 0 OR version = ?) "
                                "ORDER BY version DESC LIMIT 1")
                       .c_str());
  s.Bind(1, name).Bind(2, version).Bind(3, version);
  ASSIGN_OR_RETURN(std::vector<ModelRow> rows, ReadModelRows(db_, s));
  if (rows.empty()) {
    return absl::NotFoundError(
        version == 0 ? absl::StrCat("no model \"", name, "\" in the registry")
                     : absl::StrCat("no model \"", name, ":", version, "\" in the registry"));
  }
  return std::move(rows.front());
}

absl::StatusOr<std::vector<std::pair<std::string, int>>> StateStore::ModelAliases(
    const std::string& name) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias");
  s.Bind(1, name);
  std::vector<std::pair<std::string, int>> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.emplace_back(s.Text(0), static_cast<int>(s.Int(1)));
  if (rc != SQLITE_DONE) return SqlError(db_, "listing model aliases");
  return out;
}

absl::Status StateStore::SetModelAlias(const std::string& name, const std::string& alias,
                                       int version) {
  absl::MutexLock lock(&mu_);
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::Status {
    Statement exists(db_, "SELECT 1 FROM models WHERE name = ? AND version = ? AND deleted_ms = 0");
    exists.Bind(1, name).Bind(2, version);
    if (exists.Step() != SQLITE_ROW) {
      return absl::NotFoundError(
          absl::StrCat("no model \"", name, ":", version, "\" in the registry"));
    }
    Statement s(db_,
                "INSERT INTO model_aliases (name, alias, version, updated_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, "
                "updated_ms = excluded.updated_ms");
    s.Bind(1, name).Bind(2, alias).Bind(3, version).Bind(4, NowMs());
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "setting a model alias");
    return absl::OkStatus();
  });
}

absl::StatusOr<int> StateStore::DeleteModelAlias(const std::string& name,
                                                 const std::string& alias) {
  absl::MutexLock lock(&mu_);
  return InTransaction([&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<int> {
    Statement find(db_, "SELECT version FROM model_aliases WHERE name = ? AND alias = ?");
    find.Bind(1, name).Bind(2, alias);
    if (find.Step() != SQLITE_ROW) {
      return absl::NotFoundError(absl::StrCat("model \"", name, "\" has no alias \"", alias, "\""));
    }
    const int version = static_cast<int>(find.Int(0));
    Statement s(db_, "DELETE FROM model_aliases WHERE name = ? AND alias = ?");
    s.Bind(1, name).Bind(2, alias);
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "removing a model alias");
    return version;
  });
}

absl::StatusOr<std::vector<std::string>> StateStore::DeleteModel(const std::string& name,
                                                                 int version) {
  absl::MutexLock lock(&mu_);
  return InTransaction(
      [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS -> absl::StatusOr<std::vector<std::string>> {
        Statement aliases(
            db_, "SELECT alias FROM model_aliases WHERE name = ? AND version = ? ORDER BY alias");
        aliases.Bind(1, name).Bind(2, version);
        std::vector<std::string> removed;
        while (aliases.Step() == SQLITE_ROW) removed.push_back(aliases.Text(0));
        Statement drop(db_, "DELETE FROM model_aliases WHERE name = ? AND version = ?");
        drop.Bind(1, name).Bind(2, version);
        if (drop.Step() != SQLITE_DONE) return SqlError(db_, "removing a model's aliases");
        Statement s(db_,
                    "UPDATE models SET deleted_ms = ? WHERE name = ? AND version = ? AND "
                    "deleted_ms = 0");
        s.Bind(1, NowMs()).Bind(2, name).Bind(3, version);
        if (s.Step() != SQLITE_DONE) return SqlError(db_, "deleting a model");
        if (sqlite3_changes(db_) == 0) {
          return absl::NotFoundError(
              absl::StrCat("no model \"", name, ":", version, "\" in the registry"));
        }
        return removed;
      });
}

}  // namespace mal::server
