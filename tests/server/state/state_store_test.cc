#include "server/state/state_store.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include <algorithm>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal::server {
namespace {

using ::testing::HasSubstr;

TEST(StateStoreTest, ExperimentsAndRunsPersistAcrossReopen) {
  testing::TempDir dir;
  std::string id;
  {
    auto store = StateStore::Open(dir / "state.db");
    ASSERT_TRUE(store.ok()) << store.status();
    auto created = (*store)->CreateExperiment("req-1", "bp4d-mal", "spec-bytes", 2, 3);
    ASSERT_TRUE(created.ok()) << created.status();
    id = *created;
  }
  auto store = StateStore::Open(dir / "state.db");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(*(*store)->ExperimentSpec(id), "spec-bytes");
  auto runs = (*store)->Runs(id);
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 6u);
  EXPECT_EQ((*runs)[5].trial, 1);
  EXPECT_EQ((*runs)[5].fold, 3);
  for (const FoldRun& r : *runs) EXPECT_EQ(r.state, RunState::kPending);
}

// Pages zeroed in the middle of the file (a disk fault): refused at the open, naming the file,
// not met later by one read as an INTERNAL error of that call.
TEST(StateStoreTest, ADamagedDatabaseIsRefusedAtTheOpen) {
  testing::TempDir dir;
  const std::string path = dir / "state.db";
  {
    auto store = StateStore::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int i = 0; i < 40; ++i) {
      ASSERT_TRUE((*store)->CreateExperiment("", "e", std::string(3000, 'x'), 2, 3).ok());
    }
  }
  // Checkpointed into the main file when the store closed; zero pages 4 to 11 of it.
  std::string bytes = *ReadFile(path);
  ASSERT_GT(bytes.size(), 16u * 4096);
  std::fill(bytes.begin() + 4 * 4096, bytes.begin() + 12 * 4096, '\0');
  testing::WriteText(path, bytes);
  auto damaged = StateStore::Open(path);
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.status().code(), absl::StatusCode::kDataLoss) << damaged.status();
  EXPECT_THAT(std::string(damaged.status().message()),
              HasSubstr(path + ": the state database is damaged (SQLite's quick_check: "));
}

TEST(StateStoreTest, RequestIdMakesSubmissionIdempotent) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  auto a = store->CreateExperiment("req-7", "x", "s", 1, 3);
  auto b = store->CreateExperiment("req-7", "x", "s", 1, 3);
  auto c = store->CreateExperiment("", "x", "s", 1, 3);
  auto d = store->CreateExperiment("", "x", "s", 1, 3);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*c, *d);
  EXPECT_EQ(store->Runs(*a)->size(), 3u);
}

TEST(StateStoreTest, LifecycleWithLeaseEpochFencing) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  const std::string id = *store->CreateExperiment("", "x", "s", 1, 1);
  auto next = store->NextPending();
  ASSERT_TRUE(next.ok() && next->has_value());
  const int64_t run = (*next)->id;
  auto epoch = store->Assign(run, "worker-a");
  ASSERT_TRUE(epoch.ok());
  EXPECT_FALSE(store->Assign(run, "worker-b").ok());  // already assigned
  EXPECT_FALSE(store->NextPending()->has_value());
  ASSERT_TRUE(store->Transition(run, *epoch, RunState::kRunning, "").ok());
  // A stale epoch is rejected and changes nothing.
  absl::Status stale = store->Transition(run, *epoch - 1, RunState::kSucceeded, "");
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(stale.message()), HasSubstr("stale lease epoch"));
  EXPECT_EQ(store->Run(run)->state, RunState::kRunning);
  // An illegal move is rejected.
  EXPECT_FALSE(store->Transition(run, *epoch, RunState::kPending, "").ok());
  ASSERT_TRUE(store->Transition(run, *epoch, RunState::kSucceeded, "f1 0.61").ok());
  EXPECT_EQ(store->Run(run)->message, "f1 0.61");
  EXPECT_FALSE(store->Transition(run, *epoch, RunState::kFailed, "").ok());  // finished
  EXPECT_EQ(store->Runs(id)->at(0).state, RunState::kSucceeded);
}

TEST(StateStoreTest, LostRunsRetryUpToMaxRestartsAndFenceTheOldWorker) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  store->CreateExperiment("", "x", "s", 1, 1).IgnoreError();
  const int64_t run = (*store->NextPending())->id;
  const int64_t e1 = *store->Assign(run, "worker-a");
  EXPECT_EQ(*store->MarkLost(run, /*max_restarts=*/1), RunState::kPending);
  FoldRun r = *store->Run(run);
  EXPECT_EQ(r.attempt, 1);
  EXPECT_TRUE(r.worker.empty());
  // The worker that came back late cannot report.
  EXPECT_FALSE(store->Transition(run, e1, RunState::kSucceeded, "").ok());
  const int64_t e2 = *store->Assign(run, "worker-b");
  EXPECT_GT(e2, e1);
  EXPECT_EQ(*store->MarkLost(run, 1), RunState::kFailed);
  EXPECT_THAT(store->Run(run)->message, HasSubstr("gave up after 2 attempts"));
  EXPECT_FALSE(store->MarkLost(run, 1).ok());
}

TEST(StateStoreTest, CancelFencesWhoeverHoldsTheRun) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  store->CreateExperiment("", "x", "s", 1, 1).IgnoreError();
  const int64_t run = (*store->NextPending())->id;
  const int64_t epoch = *store->Assign(run, "w");
  ASSERT_TRUE(store->Cancel(run, "by user").ok());
  EXPECT_EQ(store->Run(run)->state, RunState::kCancelled);
  EXPECT_FALSE(store->Transition(run, epoch, RunState::kSucceeded, "").ok());
  EXPECT_TRUE(store->Cancel(run, "again").ok());
}

// One transaction for a whole experiment: unfinished runs cancelled and fenced, finished ones and
// other experiments left alone, open trials cancelled, settled ones kept.
TEST(StateStoreTest, CancelExperimentCancelsEveryUnfinishedRunAndOpenTrialAtOnce) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  const std::string id = *store->CreateExperiment("", "x", "s", /*trials=*/3, /*folds=*/2);
  const std::string other = *store->CreateExperiment("", "y", "s", 1, 1);
  std::vector<FoldRun> runs = *store->Runs(id);
  ASSERT_EQ(runs.size(), 6u);
  const int64_t epoch = *store->Assign(runs[0].id, "w");
  ASSERT_TRUE(store->Complete(runs[1].id, *store->Assign(runs[1].id, "w"), "r").ok());
  ASSERT_TRUE(store->SetTrialState(id, 2, "FAILED", "by hand").ok());
  std::vector<FoldRun> cancelled;
  ASSERT_TRUE(store->CancelExperiment(id, "cancelled by the user", "CANCELLED", &cancelled).ok());
  EXPECT_EQ(cancelled.size(), 5u);  // all but the one that succeeded
  const std::vector<FoldRun> after = *store->Runs(id);
  for (const FoldRun& r : after) {
    EXPECT_EQ(r.state, r.id == runs[1].id ? RunState::kSucceeded : RunState::kCancelled) << r.id;
  }
  EXPECT_FALSE(store->Transition(runs[0].id, epoch, RunState::kRunning, "").ok());  // fenced
  const std::vector<TrialRow> trials = *store->Trials(id);
  EXPECT_EQ(trials[0].state, "CANCELLED");
  EXPECT_EQ(trials[0].message, "cancelled by the user");
  EXPECT_EQ(trials[2].state, "FAILED");
  EXPECT_EQ((*store->Runs(other))[0].state, RunState::kPending);
  EXPECT_EQ((*store->Trials(other))[0].state, "");
}

TEST(StateStoreTest, EventsArePerExperimentContiguousAndReadFromASeq) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  const std::string a = *store->CreateExperiment("", "a", "s", 1, 1);
  const std::string b = *store->CreateExperiment("", "b", "s", 1, 1);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(*store->AppendEvent(a, "point", std::to_string(i)), i + 1);
  EXPECT_EQ(*store->AppendEvent(b, "state", "x"), 1);
  auto events = store->ReadEvents(a, 3, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[0].seq, 3);
  EXPECT_EQ((*events)[0].payload, "2");
  EXPECT_EQ(store->ReadEvents(a, 1, 2)->size(), 2u);
  EXPECT_FALSE(store->AppendEvent("exp-999", "x", "y").ok());  // no such experiment
}

TEST(StateStoreTest, AcknowledgedEventsSurviveKillNine) {
  testing::TempDir dir;
  const std::string id = *(*StateStore::Open(dir / "state.db"))->CreateExperiment("", "x", "s", 1, 1);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    auto store = StateStore::Open(dir / "state.db");
    for (int i = 0; store.ok(); ++i) {
      auto seq = (*store)->AppendEvent(id, "point", std::string(100, 'p'));
      if (!seq.ok()) break;
      const int64_t acked = *seq;
      if (::write(fds[1], &acked, sizeof acked) != sizeof acked) break;
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  int64_t last_acked = 0, value;
  while (last_acked < 200 && ::read(fds[0], &value, sizeof value) == sizeof value) last_acked = value;
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  while (::read(fds[0], &value, sizeof value) == sizeof value) last_acked = value;
  ::close(fds[0]);
  auto store = StateStore::Open(dir / "state.db");
  ASSERT_TRUE(store.ok()) << store.status();
  auto events = (*store)->ReadEvents(id, 1, 1 << 20);
  ASSERT_TRUE(events.ok());
  ASSERT_GE(static_cast<int64_t>(events->size()), last_acked);
  for (size_t i = 0; i < events->size(); ++i) ASSERT_EQ((*events)[i].seq, static_cast<int64_t>(i + 1));
}

TEST(StateStoreTest, RefusesANewerSchemaAndAnUnopenablePath) {
  testing::TempDir dir;
  { auto store = StateStore::Open(dir / "state.db"); ASSERT_TRUE(store.ok()); }
  // A coordinator from the future wrote this database.
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir / "state.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=99", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto newer = StateStore::Open(dir / "state.db");
  ASSERT_FALSE(newer.ok());
  EXPECT_THAT(std::string(newer.status().message()), HasSubstr("schema version 99"));
  EXPECT_FALSE(StateStore::Open("/nonexistent-dir/state.db").ok());
}

// A database written by the first release (schema 1) is migrated in place, keeping its rows.
TEST(StateStoreTest, MigratesSchemaOne) {
  testing::TempDir dir;
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir / "state.db").c_str(), &db), SQLITE_OK);
    const char* v1 = R"sql(
CREATE TABLE experiments (id TEXT PRIMARY KEY, request_id TEXT UNIQUE, name TEXT NOT NULL, spec BLOB NOT NULL,
  created_ms INTEGER NOT NULL);
CREATE TABLE fold_runs (id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL REFERENCES experiments(id),
  trial INTEGER NOT NULL, fold INTEGER NOT NULL, state INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
  lease_epoch INTEGER NOT NULL DEFAULT 0, worker TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
  updated_ms INTEGER NOT NULL, UNIQUE (experiment_id, trial, fold));
CREATE INDEX fold_runs_by_state ON fold_runs(state, updated_ms, id);
CREATE TABLE events (experiment_id TEXT NOT NULL REFERENCES experiments(id), seq INTEGER NOT NULL,
  kind TEXT NOT NULL, payload BLOB NOT NULL, time_ms INTEGER NOT NULL, PRIMARY KEY (experiment_id, seq)) WITHOUT ROWID;
INSERT INTO experiments VALUES ('exp-1', 'r', 'old', 'spec', 5);
INSERT INTO fold_runs (experiment_id, trial, fold, state, updated_ms) VALUES ('exp-1', 0, 1, 0, 5);
PRAGMA user_version=1;
)sql";
    ASSERT_EQ(sqlite3_exec(db, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  auto store = StateStore::Open(dir / "state.db");
  ASSERT_TRUE(store.ok()) << store.status();
  auto experiments = (*store)->Experiments();
  ASSERT_TRUE(experiments.ok());
  ASSERT_EQ(experiments->size(), 1u);
  EXPECT_EQ((*experiments)[0].name, "old");
  EXPECT_EQ((*experiments)[0].state, 1);
  auto runs = (*store)->Runs("exp-1");
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  EXPECT_EQ((*runs)[0].reported, 0);
  EXPECT_TRUE((*store)->Trials("exp-1")->empty());
  ModelRow m;
  m.name = "old";
  m.experiment_id = "exp-1";
  EXPECT_EQ(*(*store)->RegisterModel(m), 1);
  EXPECT_EQ(*(*store)->RegisterModel(m), 2);
}

// Runs `sql` on the database through a second connection (as another process would).
void ExecOn(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);
}

constexpr char kRefuseEvents[] =
    "CREATE TRIGGER refuse_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); "
    "END";

// RunEvents: a run's move and the events it makes commit in one transaction. `make` sees the row
// before and after; an append that fails fails the move and leaves the row as it was (a crash
// between the two used to keep the move without its events).
TEST(StateStoreTest, AMoveAndItsEventsCommitTogetherOrNotAtAll) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  const std::string id = *store->CreateExperiment("", "x", "s", 1, 2);
  const std::vector<FoldRun> runs = *store->Runs(id);
  std::vector<std::string> seen;
  RunEvents events;
  events.make = [&](const FoldRun& before, const FoldRun& after) {
    seen.push_back(absl::StrCat(before.id, ":", RunStateName(before.state), "->",
                                RunStateName(after.state), ":", after.attempt));
    return std::vector<EventIn>{{"state", RunStateName(after.state)}};
  };
  FoldRun updated;
  const int64_t epoch = *store->Assign(runs[0].id, "w", &updated, &events);
  EXPECT_EQ(updated.state, RunState::kAssigned);
  ASSERT_EQ(events.appended.size(), 1u);
  EXPECT_EQ(events.first_seq, 1);
  ASSERT_TRUE(store->Transition(runs[0].id, epoch, RunState::kRunning, "", nullptr, &events).ok());
  EXPECT_EQ(events.first_seq, 2);

  ExecOn(dir / "state.db", kRefuseEvents);
  absl::Status refused = store->Complete(runs[0].id, epoch, "result", &updated, &events);
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.message()), HasSubstr("disk full"));
  EXPECT_TRUE(events.appended.empty());
  EXPECT_EQ(events.first_seq, 0);
  EXPECT_EQ(store->Run(runs[0].id)->state, RunState::kRunning);  // rolled back
  EXPECT_EQ(store->Run(runs[0].id)->result, "");
  EXPECT_FALSE(store->MarkLost(runs[0].id, 1, "gone", nullptr, &events).ok());
  EXPECT_EQ(store->Run(runs[0].id)->state, RunState::kRunning);
  EXPECT_EQ(*store->LastEventSeq(id), 2);
  ExecOn(dir / "state.db", "DROP TRIGGER refuse_events");

  // A move refused for its own reasons appends nothing; one that moves nothing (a finished run
  // cancelled) neither.
  EXPECT_FALSE(store->Complete(runs[0].id, epoch - 1, "result", nullptr, &events).ok());
  EXPECT_TRUE(events.appended.empty());
  ASSERT_TRUE(store->MarkLost(runs[0].id, 1, "gone", &updated, &events).ok());
  EXPECT_EQ(updated.state, RunState::kPending);
  EXPECT_EQ(events.first_seq, 3);
  const int64_t again = *store->Assign(runs[0].id, "w2");
  ASSERT_TRUE(store->Complete(runs[0].id, again, "result").ok());  // without events
  ASSERT_TRUE(store->Cancel(runs[0].id, "late", nullptr, &events).ok());
  EXPECT_TRUE(events.appended.empty());
  std::vector<FoldRun> cancelled;
  ASSERT_TRUE(store->CancelExperiment(id, "by user", "CANCELLED", &cancelled, &events).ok());
  ASSERT_EQ(events.appended.size(), 1u);
  EXPECT_EQ(events.appended[0].payload, "CANCELLED");
  FoldRun added;
  ASSERT_TRUE(store->AddRun(id, 0, 0, &added, &events).ok());
  EXPECT_EQ(added.fold, 0);

  const std::string a = absl::StrCat(runs[0].id), b = absl::StrCat(runs[1].id);
  EXPECT_THAT(seen, ::testing::ElementsAre(
                        a + ":PENDING->ASSIGNED:0", a + ":ASSIGNED->RUNNING:0",
                        a + ":RUNNING->SUCCEEDED:0",  // refused by the trigger
                        a + ":RUNNING->PENDING:1",    // refused by the trigger
                        a + ":RUNNING->PENDING:1", b + ":PENDING->CANCELLED:0",
                        absl::StrCat(added.id, ":PENDING->PENDING:0")));
  // Every event that was appended is in the log, in order, once.
  std::vector<std::string> log;
  const std::vector<Event> written = *store->ReadEvents(id, 1, 100);
  for (const Event& e : written) log.push_back(e.payload);
  EXPECT_THAT(log, ::testing::ElementsAre("ASSIGNED", "RUNNING", "PENDING", "CANCELLED",
                                          "PENDING"));
}

// StateEvents: a trial's or an experiment's state and its events (trial_result; the state change
// and End) commit in one transaction. They used to be published before the state was written.
TEST(StateStoreTest, ATrialOrExperimentStateAndItsEventsCommitTogetherOrNotAtAll) {
  testing::TempDir dir;
  auto store = *StateStore::Open(dir / "state.db");
  const std::string id = *store->CreateExperiment("", "x", "s", 2, 1);
  auto experiment_state = [&] {
    const std::vector<ExperimentRow> rows = *store->Experiments();
    for (const ExperimentRow& row : rows)
      if (row.id == id) return absl::StrCat(row.state, " ", row.message);
    return std::string("missing");
  };
  const std::string running = experiment_state();
  StateEvents trial;
  trial.events = {{"trial_result", "trial 0"}};
  ASSERT_TRUE(store->SetTrialState(id, 0, "SUCCEEDED", "done", &trial).ok());
  EXPECT_EQ(trial.first_seq, 1);
  ASSERT_EQ(trial.appended.size(), 1u);
  EXPECT_EQ(trial.appended[0].payload, "trial 0");

  ExecOn(dir / "state.db", kRefuseEvents);
  StateEvents other;
  other.events = {{"trial_result", "trial 1"}};
  absl::Status refused = store->SetTrialState(id, 1, "FAILED", "a fold failed", &other);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("disk full"));
  EXPECT_TRUE(other.appended.empty());
  EXPECT_EQ(other.first_seq, 0);
  EXPECT_EQ((*store->Trials(id))[1].state, "");  // rolled back
  StateEvents end;
  end.events = {{"state", "SUCCEEDED"}, {"end", "the end"}};
  refused = store->SetExperimentState(id, 2, "all done", &end);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("disk full"));
  EXPECT_TRUE(end.appended.empty());
  EXPECT_EQ(experiment_state(), running);
  EXPECT_EQ(*store->LastEventSeq(id), 1);
  ExecOn(dir / "state.db", "DROP TRIGGER refuse_events");

  ASSERT_TRUE(store->SetTrialState(id, 1, "FAILED", "a fold failed", &other).ok());
  ASSERT_TRUE(store->SetExperimentState(id, 2, "all done", &end).ok());
  EXPECT_EQ(end.first_seq, 3);
  EXPECT_EQ(end.appended.size(), 2u);
  EXPECT_EQ(experiment_state(), "2 all done");
  EXPECT_EQ(store->SetExperimentState("no-such", 2, "", &end).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*store->LastEventSeq(id), 4);
  std::vector<std::string> log;
  const std::vector<Event> written = *store->ReadEvents(id, 1, 100);
  for (const Event& e : written) log.push_back(e.payload);
  EXPECT_THAT(log, ::testing::ElementsAre("trial 0", "trial 1", "SUCCEEDED", "the end"));
}

}  // namespace
}  // namespace mal::server
