// The coordinator core without sockets: a fake clock and the tests acting as workers (calling
// the worker-side methods directly) drive leases, retries, fencing, search and settling.

#include "server/core/coordinator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/spec/spec.h"
#include "common/util/sha256.h"
#include "server/core/model_registry.h"
#include "server/service/prometheus_text.h"
#include "tests/test_util.h"

namespace mal::server {
namespace {

using ::testing::HasSubstr;

class FakeClock : public Clock {
 public:
  int64_t NowMs() override { return now; }
  int64_t now = 1'000'000;
};

v1::ExperimentSpec Spec(const std::string& extra = "") {
  auto spec = ParseSpecYaml(absl::StrCat(R"(
name: unit
method: mal
data:
  au: {format: synthface, root: /data/sf}
  fe: {format: synthface, root: /data/sf}
model: {backbone: small_cnn, input: 32, resize: 36}
max_restarts: 1
)",
                                         extra),
                            "unit.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void Open() {
    core_.reset();
    hub_.reset();
    store_ = *StateStore::Open(dir_ / "state.db");
    hub_ = std::make_unique<EventHub>(store_.get(), 1000);
    artifacts_ = std::make_unique<ArtifactStore>(dir_ / "artifacts", artifact_limits_);
    CoordinatorOptions o;
    o.lease_ms = lease_ms_;
    o.heartbeat_ms = heartbeat_ms_;
    auto c = Coordinator::Create(store_.get(), hub_.get(), artifacts_.get(), &clock_, o);
    ASSERT_TRUE(c.ok()) << c.status();
    core_ = std::move(*c);
  }
  void Reopen() {
    core_.reset();
    hub_.reset();
    store_.reset();
    Open();
  }

  std::string Submit(const v1::ExperimentSpec& spec, const std::string& request_id = "") {
    v1::SubmitExperimentRequest req;
    *req.mutable_spec() = spec;
    req.set_request_id(request_id);
    auto r = core_->Submit(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->experiment_id() : "";
  }
  void Register(const std::string& name, int slots, std::vector<v1::RunClaim> claims = {}) {
    v1::RegisterRequest req;
    req.set_name(name);
    req.set_slots(slots);
    req.set_instance("i-" + name);
    for (auto& c : claims) *req.add_running() = c;
    ASSERT_TRUE(core_->Register(req).ok());
  }
  v1::HeartbeatResponse Beat(const std::string& name, int free,
                             const std::vector<v1::Assignment>& held = {}) {
    v1::HeartbeatRequest req;
    req.set_name(name);
    req.set_free_slots(free);
    for (const auto& a : held) {
      v1::RunClaim* c = req.add_running();
      c->set_run_id(a.run_id());
      c->set_lease_epoch(a.lease_epoch());
    }
    auto r = core_->Heartbeat(req);
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }
  // A report for `a`'s run under its lease, its events to be added.
  static v1::ReportEventsRequest ReportFor(const v1::Assignment& a, int64_t first_index) {
    v1::ReportEventsRequest req;
    req.set_run_id(a.run_id());
    req.set_lease_epoch(a.lease_epoch());
    req.set_first_index(first_index);
    return req;
  }
  absl::Status Report(const v1::Assignment& a, int64_t first_index, int points) {
    v1::ReportEventsRequest req = ReportFor(a, first_index);
    for (int i = 0; i < points; ++i)
      req.add_events()->mutable_point()->set_iteration(first_index + i);
    return core_->ReportEvents(req).status();
  }
  absl::Status Complete(const v1::Assignment& a, double f1) {
    v1::CompleteRunRequest req;
    req.set_run_id(a.run_id());
    req.set_lease_epoch(a.lease_epoch());
    req.mutable_result()->add_aus(1);
    req.mutable_result()->add_aus(2);
    req.mutable_result()->add_test_f1(f1);
    req.mutable_result()->add_test_f1(f1 / 2);
    req.mutable_result()->set_test_mean_f1(f1 * 0.75);
    return core_->Complete(req);
  }
  absl::Status FailRun(const v1::Assignment& a, const std::string& message, bool retryable) {
    v1::FailRunRequest req;
    req.set_run_id(a.run_id());
    req.set_lease_epoch(a.lease_epoch());
    req.set_message(message);
    req.set_retryable(retryable);
    return core_->Fail(req);
  }
  // Every event of the experiment, in order, checking seqs run 1..n without a gap.
  std::vector<v1::Event> Events(const std::string& id) {
    auto events = store_->ReadEvents(id, 1, 100000);
    EXPECT_TRUE(events.ok());
    std::vector<v1::Event> out;
    for (size_t i = 0; i < events->size(); ++i) {
      EXPECT_EQ((*events)[i].seq, static_cast<int64_t>(i + 1));
      v1::Event e;
      EXPECT_TRUE(e.ParseFromString((*events)[i].payload));
      e.set_seq((*events)[i].seq);
      out.push_back(e);
    }
    return out;
  }
  v1::ExperimentInfo Info(const std::string& id) { return *core_->Get(id); }
  // Runs `sql` on the state database through a second connection (triggers that refuse writes).
  void ExecSql(const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ / "state.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  // Time passing with the coordinator running: it ticks every TickPeriodMs (500 ms with the
  // default heartbeat), as CoordinatorServer does (a single jump longer than half a lease is a
  // coordinator pause).
  void Elapse(int64_t ms) {
    CoordinatorOptions o;
    o.heartbeat_ms = heartbeat_ms_;
    const int64_t period = TickPeriodMs(o);
    for (; ms > 0; ms -= period) {
      clock_.now += std::min<int64_t>(ms, period);
      core_->Tick();
    }
  }

  int64_t lease_ms_ = 10000, heartbeat_ms_ = 1000;

  testing::TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<EventHub> hub_;
  std::unique_ptr<ArtifactStore> artifacts_;
  ArtifactStore::Limits artifact_limits_;  // Open's
  std::unique_ptr<Coordinator> core_;
};

TEST_F(CoordinatorTest, SubmitExpandsTrialsTimesFoldsAndIsIdempotentByRequestId) {
  v1::SubmitExperimentRequest req;
  *req.mutable_spec() =
      Spec("search: {algorithm: grid, space: {train.lr: {choice: ['0.1', '0.01']}}}\n");
  req.set_request_id("r1");
  auto a = core_->Submit(req);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->trials(), 2);
  EXPECT_EQ(a->runs(), 6);
  auto b = core_->Submit(req);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->existing());
  EXPECT_EQ(b->experiment_id(), a->experiment_id());
  EXPECT_EQ(core_->List({})->experiments_size(), 1);
  EXPECT_EQ(Info(a->experiment_id()).runs_size(), 6);
}

TEST_F(CoordinatorTest, MalformedSpecIsRejectedWithItsFieldPath) {
  v1::SubmitExperimentRequest req;
  *req.mutable_spec() = Spec("train: {lr: -1}\n");
  auto r = core_->Submit(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("train.lr"));
  // A grid of 2000 trials over 100 folds is a typo, not an experiment.
  *req.mutable_spec() = Spec(
      "cv: {protocol: kfold, folds: 100}\nsearch: {algorithm: grid, space: {train.epochs: "
      "{int_uniform: [1, 2000]}}}\n");
  r = core_->Submit(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("2000 trials x 100 folds"));
  EXPECT_EQ(core_->List({})->experiments_size(), 0);
}

// Inputs that used to exhaust the coordinator are refused at once, with their numbers, and store
// nothing (issue 14).
TEST_F(CoordinatorTest, HugeRequestsAreRefusedBeforeAnythingIsBuilt) {
  v1::SubmitExperimentRequest req;
  // A grid over an integer range of 2^31 values: counted, not expanded.
  *req.mutable_spec() = Spec(
      "search: {algorithm: grid, space: {train.max_iterations: {int_uniform: [0, 2147483647]}}}\n");
  // (Expanding it would take tens of GB; the count names the size without building anything.)
  auto r = core_->Submit(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("2147483648 trials"));
  // Random search with 2^31 - 1 trials.
  *req.mutable_spec() =
      Spec("search: {trials: 2147483647, space: {train.lr: {uniform: [0.001, 0.1]}}}\n");
  r = core_->Submit(req);
  EXPECT_THAT(r.status().message(), HasSubstr("search.trials"));
  // A 10 MB name, dataset root and request id.
  *req.mutable_spec() = Spec();
  req.mutable_spec()->set_name(std::string(10 << 20, 'a'));
  r = core_->Submit(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("bytes, at most"));
  *req.mutable_spec() = Spec();
  req.mutable_spec()->mutable_data()->mutable_au()->set_root(std::string(5000, 'r'));
  EXPECT_THAT(core_->Submit(req).status().message(), HasSubstr("data.au.root: 5000 characters"));
  *req.mutable_spec() = Spec();
  req.set_request_id(std::string(10 << 20, 'q'));
  EXPECT_THAT(core_->Submit(req).status().message(), HasSubstr("request_id"));
  // cv.only with a fold twice: INVALID_ARGUMENT naming it, not an SQL error.
  req.clear_request_id();
  *req.mutable_spec() = Spec("cv: {only: [1, 1]}\n");
  r = core_->Submit(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("cv.only[1]: fold 1 listed twice"));
  EXPECT_EQ(core_->List({})->experiments_size(), 0);
}

// Lists that scale (issue 14): pages in submission order, summaries without specs, tokens that
// only this server issues.
TEST_F(CoordinatorTest, ListIsPagedInSubmissionOrderWithSummaries) {
  for (int i = 0; i < 5; ++i) Submit(Spec());
  std::vector<std::string> seen;
  v1::ListExperimentsRequest req;
  req.set_page_size(2);
  int pages = 0;
  do {
    auto page = core_->List(req);
    ASSERT_TRUE(page.ok()) << page.status();
    EXPECT_EQ(page->total(), 5);
    EXPECT_LE(page->experiments_size(), 2);
    for (const auto& e : page->experiments()) {
      seen.push_back(e.id());
      EXPECT_FALSE(e.has_spec());
      EXPECT_EQ(e.runs_size(), 0);
      EXPECT_EQ(e.runs_total(), 3);
    }
    req.set_page_token(page->next_page_token());
    ++pages;
  } while (!req.page_token().empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, (std::vector<std::string>{"exp-1", "exp-2", "exp-3", "exp-4", "exp-5"}));

  v1::ListExperimentsRequest with_spec;
  with_spec.set_with_spec(true);
  EXPECT_EQ(core_->List(with_spec)->experiments(0).spec().name(), "unit");
  v1::ListExperimentsRequest bad;
  bad.set_page_size(1001);
  EXPECT_THAT(core_->List(bad).status().message(), HasSubstr("page_size: 1001"));
  bad.set_page_size(0);
  bad.set_page_token("'; DROP TABLE");
  EXPECT_EQ(core_->List(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

// Deleting: refused while running and while its models are registered; then the runs, events and
// artifacts are gone, also after a restart, and the id is not reused.
TEST_F(CoordinatorTest, DeleteRemovesAFinishedExperimentAndNeverReusesItsId) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  EXPECT_EQ(core_->Delete(id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(core_->Delete(id).status().message(), HasSubstr("cancel it first"));
  Register("w1", 1);
  const auto hb = Beat("w1", 1);
  ASSERT_EQ(hb.assignments_size(), 1);
  testing::WriteText(artifacts_->RunDir(id, 0, 1) + "/model.pt", "weights");
  ASSERT_TRUE(Complete(hb.assignments(0), 0.8).ok());
  ASSERT_EQ(Info(id).state(), v1::EXPERIMENT_SUCCEEDED);

  auto refused = core_->Delete(id);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("unit:1"));
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_SUCCEEDED);  // nothing changed
  ModelRegistry registry(store_.get());
  ASSERT_TRUE(registry.Delete("unit:1").ok());

  auto deleted = core_->Delete(id);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->artifact_bytes(), 7);
  EXPECT_FALSE(std::filesystem::exists(dir_ / ("artifacts/" + id)));
  EXPECT_EQ(core_->Get(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->Delete(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->ReadEvents(id, 1, 100)->empty());
  EXPECT_EQ(core_->List({})->total(), 0);

  Reopen();
  EXPECT_EQ(core_->Get(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Submit(Spec()), "exp-2");
  EXPECT_EQ(core_->List({})->total(), 1);
}

TEST_F(CoordinatorTest, AssignsUpToFreeSlotsWithTheTrialSpec) {
  const std::string id = Submit(Spec());
  EXPECT_TRUE(Beat("w1", 1).reregister());  // unknown until it registers
  Register("w1", 2);
  auto hb = Beat("w1", 2);
  ASSERT_EQ(hb.assignments_size(), 2);
  EXPECT_EQ(hb.assignments(0).fold(), 1);
  EXPECT_EQ(hb.assignments(1).fold(), 2);
  EXPECT_EQ(hb.assignments(0).lease_epoch(), 1);
  EXPECT_EQ(hb.assignments(0).spec().seed(), 1);
  EXPECT_TRUE(hb.assignments(0).spec().search().space().empty());
  auto info = Info(id);
  EXPECT_EQ(info.runs(0).state(), v1::RUN_ASSIGNED);
  EXPECT_EQ(info.runs(2).state(), v1::RUN_PENDING);
}

TEST_F(CoordinatorTest, CompletingEveryFoldAggregatesAndEnds) {
  const std::string id = Submit(Spec());
  Register("w1", 3);
  auto hb = Beat("w1", 3);
  ASSERT_EQ(hb.assignments_size(), 3);
  ASSERT_TRUE(Report(hb.assignments(0), 1, 3).ok());
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_RUNNING);
  ASSERT_TRUE(Complete(hb.assignments(0), 0.4).ok());
  ASSERT_TRUE(Complete(hb.assignments(1), 0.6).ok());
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_RUNNING);
  ASSERT_TRUE(Complete(hb.assignments(2), 0.8).ok());
  auto done = core_->Wait(id, absl::ZeroDuration());
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state(), v1::EXPERIMENT_SUCCEEDED);
  auto results = *core_->Results(id);
  ASSERT_EQ(results.trials_size(), 1);
  const auto& t = results.trials(0);
  EXPECT_EQ(t.state(), "SUCCEEDED");
  EXPECT_NEAR(t.mean_f1(), 0.45, 1e-9);                // mean of 0.3, 0.45, 0.6
  EXPECT_NEAR(t.std_f1(), std::sqrt(0.03 / 2), 1e-9);  // population std
  EXPECT_NEAR(t.au_mean_f1(0), 0.6, 1e-9);
  EXPECT_NEAR(t.au_mean_f1(1), 0.3, 1e-9);
  EXPECT_EQ(results.best_trial(), 0);
  const auto events = Events(id);
  ASSERT_FALSE(events.empty());
  EXPECT_TRUE(events.back().has_end());
  EXPECT_EQ(events.back().end().state(), v1::EXPERIMENT_SUCCEEDED);
  int points = 0;
  for (const auto& e : events) points += e.has_point();
  EXPECT_EQ(points, 3);
}

TEST_F(CoordinatorTest, RetriedReportsAreAppendedOnce) {
  const std::string id = Submit(Spec());
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  ASSERT_TRUE(Report(a, 1, 5).ok());
  ASSERT_TRUE(Report(a, 1, 5).ok());  // the answer was lost; the worker sends it again
  ASSERT_TRUE(Report(a, 4, 4).ok());  // overlaps: 4, 5 seen, 6, 7 new
  EXPECT_EQ(Report(a, 9, 1).code(), absl::StatusCode::kInvalidArgument);  // a gap
  std::vector<int64_t> iterations;
  for (const auto& e : Events(id)) {
    if (e.has_point()) iterations.push_back(e.point().iteration());
  }
  EXPECT_EQ(iterations, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7}));
}

TEST_F(CoordinatorTest, LapsedLeaseLosesTheRunAndFencesTheOldEpoch) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto first = Beat("w1", 1).assignments(0);
  ASSERT_TRUE(Report(first, 1, 1).ok());
  Elapse(5000);
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_RUNNING);  // within the lease
  Elapse(5001);
  auto run = Info(id).runs(0);
  EXPECT_EQ(run.state(), v1::RUN_PENDING);
  EXPECT_EQ(run.attempt(), 1);

  Register("w2", 1);
  const auto second = Beat("w2", 1).assignments(0);
  EXPECT_EQ(second.run_id(), first.run_id());
  EXPECT_EQ(second.attempt(), 1);
  EXPECT_GT(second.lease_epoch(), first.lease_epoch());
  // The first worker comes back late: every report it makes is refused.
  EXPECT_EQ(Report(first, 2, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Complete(first, 0.9).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FailRun(first, "late", false).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->BeginUpload(first.run_id(), first.lease_epoch(), "model.pt").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Beat("w1", 1).reregister());  // its lease lapsed: it must register again

  bool saw_lost = false;
  for (const auto& e : Events(id))
    saw_lost = saw_lost || (e.has_state() && e.state().state() == "LOST");
  EXPECT_TRUE(saw_lost);

  // Past max_restarts (1) the run fails, and with it the trial and the experiment.
  Elapse(20000);
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_FAILED);
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_FAILED);
  EXPECT_TRUE(Events(id).back().has_end());
}

// An upload refused for the coordinator's free-disk floor (the worker retries it) becomes the run's
// message and a run state event, so a run that trained and cannot finish says why.
TEST_F(CoordinatorTest, UploadRefusedForDiskSpaceBecomesTheRunsMessage) {
  artifact_limits_.min_free_bytes = int64_t{1} << 60;  // no disk has an exabyte free
  Reopen();
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  ASSERT_TRUE(Report(a, 1, 1).ok());
  const auto refused = core_->BeginUpload(a.run_id(), a.lease_epoch(), "model.pt");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  const auto run = Info(id).runs(0);
  EXPECT_EQ(run.state(), v1::RUN_RUNNING);
  EXPECT_THAT(run.message(), HasSubstr("waiting to upload model.pt: the coordinator's disk is "
                                       "nearly full"));
  EXPECT_THAT(run.message(), HasSubstr("--min-free-mb"));
  // The worker's retries repeat the same refusal: one event, not one per try.
  (void)core_->BeginUpload(a.run_id(), a.lease_epoch(), "model.pt");
  int waiting_events = 0;
  for (const auto& e : Events(id)) {
    waiting_events += e.has_state() && e.state().scope() == "run" &&
                      absl::StrContains(e.state().message(), "waiting to upload model.pt");
  }
  EXPECT_EQ(waiting_events, 1);
}

// The message of a refusal while the chunks were written (UploadRefused) is cleared by the next
// upload that commits; other refusals (a bad name, a file over the size limit) and calls from a
// lapsed lease leave it alone.
TEST_F(CoordinatorTest, AnUploadThatCommitsClearsTheWaitingMessage) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  ASSERT_TRUE(Report(a, 1, 1).ok());
  core_->UploadRefused(a.run_id(), a.lease_epoch(), "weights/epoch_001.csv",
                       absl::ResourceExhaustedError("the coordinator's disk is nearly full"));
  EXPECT_EQ(Info(id).runs(0).message(),
            "waiting to upload weights/epoch_001.csv: the coordinator's disk is nearly full");
  core_->UploadRefused(a.run_id(), a.lease_epoch(), "x", absl::InvalidArgumentError("too big"));
  core_->UploadRefused(a.run_id(), a.lease_epoch() + 1, "y", absl::ResourceExhaustedError("full"));
  EXPECT_THAT(Info(id).runs(0).message(), HasSubstr("weights/epoch_001.csv"));
  auto up = core_->BeginUpload(a.run_id(), a.lease_epoch(), "model.pt");
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_TRUE((*up)->Append("weights").ok());
  Sha256 sha;
  sha.Update("weights");
  ASSERT_TRUE(
      core_->FinishUpload(a.run_id(), a.lease_epoch(), "model.pt", **up, sha.HexDigest()).ok());
  EXPECT_EQ(Info(id).runs(0).message(), "");
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_RUNNING);
}

TEST_F(CoordinatorTest, UnclaimedAssignmentIsLostAtTheNextHeartbeat) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  ASSERT_EQ(Beat("w1", 1).assignments_size(), 1);  // the answer never reaches the worker
  auto hb = Beat("w1", 1);                         // which claims nothing
  ASSERT_EQ(hb.assignments_size(), 1);             // the run comes back as attempt 2
  EXPECT_EQ(hb.assignments(0).attempt(), 1);
}

TEST_F(CoordinatorTest, RetryableFailureRequeuesAndNonRetryableFailsTheTrialAtOnce) {
  const std::string id = Submit(Spec());
  Register("w1", 3);
  auto hb = Beat("w1", 3);
  ASSERT_TRUE(FailRun(hb.assignments(0), "engine process killed by signal 9", true).ok());
  auto info = Info(id);
  EXPECT_EQ(info.runs(0).state(), v1::RUN_PENDING);
  EXPECT_EQ(info.runs(0).attempt(), 1);
  ASSERT_TRUE(FailRun(hb.assignments(1), "/data/sf: no such directory", false).ok());
  info = Info(id);
  EXPECT_EQ(info.runs(1).state(), v1::RUN_FAILED);
  EXPECT_EQ(info.runs(1).attempt(), 0);
  EXPECT_EQ(info.runs(0).state(), v1::RUN_CANCELLED);  // the rest of the trial stops
  EXPECT_EQ(info.runs(2).state(), v1::RUN_CANCELLED);
  EXPECT_EQ(info.state(), v1::EXPERIMENT_FAILED);
  EXPECT_THAT(info.message(), HasSubstr("/data/sf: no such directory"));
  // The worker still running fold 3 is told to drop it.
  auto next = Beat("w1", 2, {hb.assignments(2)});
  ASSERT_EQ(next.drop_size(), 1);
  EXPECT_EQ(next.drop(0).run_id(), hb.assignments(2).run_id());
}

TEST_F(CoordinatorTest, CancelStopsRunsAndTellsTheirWorkers) {
  const std::string id = Submit(Spec());
  Register("w1", 2);
  auto hb = Beat("w1", 2);
  auto info = core_->Cancel(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::EXPERIMENT_CANCELLED);
  for (const auto& r : info->runs()) EXPECT_EQ(r.state(), v1::RUN_CANCELLED);
  auto next = Beat("w1", 0, {hb.assignments(0), hb.assignments(1)});
  EXPECT_EQ(next.drop_size(), 2);
  EXPECT_EQ(next.assignments_size(), 0);
  EXPECT_EQ(Events(id).back().end().state(), v1::EXPERIMENT_CANCELLED);
  EXPECT_TRUE(core_->Cancel(id).ok());  // again: no change
}

// Cancelled while only the final fit runs (every trial settled): CANCELLED, not "final fit
// failed"; and a search's trials all cancelled with its runs.
TEST_F(CoordinatorTest, CancelDuringTheFinalFitCancelsTheExperiment) {
  const std::string id = Submit(Spec("final_fit: true\ncv: {only: [1]}\n"));
  Register("w1", 1);
  ASSERT_TRUE(Complete(Beat("w1", 1).assignments(0), 0.5).ok());
  ASSERT_EQ(Beat("w1", 1).assignments(0).fold(), 0);
  auto info = core_->Cancel(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::EXPERIMENT_CANCELLED);
  EXPECT_EQ(Events(id).back().end().state(), v1::EXPERIMENT_CANCELLED);

  const std::string search = Submit(
      Spec("cv: {only: [1, 2]}\nsearch: {algorithm: grid, space: {train.lr: {choice: ['0.1', "
           "'0.01', '0.001']}}}\n"));
  info = core_->Cancel(search);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::EXPERIMENT_CANCELLED);
  ASSERT_EQ(info->runs_size(), 6);
  for (const auto& r : info->runs()) EXPECT_EQ(r.state(), v1::RUN_CANCELLED);
  int run_events = 0;
  for (const v1::Event& ev : Events(search)) {
    run_events +=
        ev.has_state() && ev.state().scope() == "run" && ev.state().state() == "CANCELLED";
  }
  EXPECT_EQ(run_events, 6);
  auto results = core_->Results(search);
  ASSERT_TRUE(results.ok());
  for (const auto& t : results->trials()) EXPECT_EQ(t.state(), "CANCELLED");
}

// Every trial a cancel ends that had begun gets its trial_result (CANCELLED, with the folds that
// had finished), as a settled trial does, before the experiment's state event and End; a trial
// settled before the cancel keeps its one trial_result; one that never began gets none.
TEST_F(CoordinatorTest, ACancelAnnouncesEveryTrialItEnds) {
  const std::string id =
      Submit(Spec("cv: {only: [1, 2]}\nsearch: {algorithm: grid, concurrent: 3, space: {train.lr: "
                  "{choice: ['0.1', '0.01', '0.001', '0.0001']}}}\n"));
  Register("w1", 6);
  const auto hb = Beat("w1", 6);
  ASSERT_EQ(hb.assignments_size(), 6);  // trials 0-2; trial 3 waits
  for (const auto& a : hb.assignments()) {
    if (a.trial() == 0) {
      ASSERT_TRUE(Complete(a, 0.6).ok());  // trial 0 settles SUCCEEDED
    } else if (a.trial() == 1 && a.fold() == 1) {
      ASSERT_TRUE(Complete(a, 0.4).ok());
    }
  }
  ASSERT_TRUE(core_->Cancel(id).ok());
  std::vector<std::string> tail;  // the experiment-level events, in order
  std::map<int, v1::TrialResult> last;
  int results = 0;
  for (const v1::Event& e : Events(id)) {
    if (e.has_trial_result()) {
      tail.push_back(
          absl::StrCat("trial ", e.trial_result().trial(), " ", e.trial_result().state()));
      last[e.trial_result().trial()] = e.trial_result();
      ++results;
    }
    if (e.has_state() && e.state().scope() == "experiment") tail.push_back(e.state().state());
    if (e.has_end()) tail.push_back("end");
  }
  EXPECT_THAT(tail, ::testing::ElementsAre("RUNNING", "trial 0 SUCCEEDED", "trial 1 CANCELLED",
                                           "trial 2 CANCELLED", "CANCELLED", "end"));
  EXPECT_EQ(results, 3);
  EXPECT_DOUBLE_EQ(last[0].mean_f1(), 0.6 * 0.75);  // Complete: test mean F1 = 0.75 x f1
  EXPECT_DOUBLE_EQ(last[1].mean_f1(), 0.4 * 0.75);  // its one finished fold
  EXPECT_EQ(last[1].message(), kCancelledByUser);
  EXPECT_EQ(last[2].mean_f1(), 0.0);
  EXPECT_EQ(last[2].params().at("train.lr"), "0.001");
  EXPECT_EQ(last[2].message(), kCancelledByUser);
  auto stored = core_->Results(id);
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(stored->trials_size(), 4);
  EXPECT_EQ(stored->trials(1).state(), "CANCELLED");
  EXPECT_DOUBLE_EQ(stored->trials(1).mean_f1(), last[1].mean_f1());
  EXPECT_EQ(stored->trials(3).state(), "CANCELLED");  // never began: no event, still CANCELLED
}

TEST_F(CoordinatorTest, ConcurrentTrialsAreLimited) {
  const std::string id =
      Submit(Spec("cv: {only: [1, 2]}\nsearch: {algorithm: grid, concurrent: 1, space: {train.lr: "
                  "{choice: ['0.1', '0.01']}}}\n"));
  Register("w1", 4);
  auto hb = Beat("w1", 4);
  ASSERT_EQ(hb.assignments_size(), 2);  // trial 0's two folds; trial 1 waits
  EXPECT_EQ(hb.assignments(0).trial(), 0);
  EXPECT_EQ(hb.assignments(1).trial(), 0);
  EXPECT_EQ(hb.assignments(0).spec().train().lr(), 0.1);
  ASSERT_TRUE(Complete(hb.assignments(0), 0.5).ok());
  ASSERT_TRUE(Complete(hb.assignments(1), 0.5).ok());
  auto next = Beat("w1", 4);
  ASSERT_EQ(next.assignments_size(), 2);
  EXPECT_EQ(next.assignments(0).trial(), 1);
  EXPECT_EQ(next.assignments(0).spec().train().lr(), 0.01);
  ASSERT_TRUE(Complete(next.assignments(0), 0.9).ok());
  ASSERT_TRUE(Complete(next.assignments(1), 0.9).ok());
  EXPECT_EQ((*core_->Results(id)).best_trial(), 1);
}

TEST_F(CoordinatorTest, EarlyStoppingStopsTrialsBelowTheTopThirdAtARung) {
  const std::string id =
      Submit(Spec("cv: {only: [1]}\ntrain: {epochs: 9}\nsearch: {algorithm: grid, concurrent: 3, "
                  "early_stopping: true, "
                  "space: {train.lr: {choice: ['0.1', '0.01', '0.001']}}}\n"));
  Register("w1", 3);
  const auto hb = Beat("w1", 3);
  ASSERT_EQ(hb.assignments_size(), 3);
  auto epoch = [&](const v1::Assignment& a, int epoch, double val_f1) {
    v1::ReportEventsRequest req = ReportFor(a, epoch);
    req.add_events()->mutable_epoch()->set_epoch(epoch);
    req.mutable_events(0)->mutable_epoch()->set_val_mean_f1(val_f1);
    return core_->ReportEvents(req);
  };
  ASSERT_FALSE(epoch(hb.assignments(0), 1, 0.5)->stop());
  ASSERT_FALSE(epoch(hb.assignments(1), 1, 0.7)->stop());
  auto third = epoch(hb.assignments(2), 1, 0.2);  // last of three at rung 1: stopped
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(third->stop());
  ASSERT_FALSE(epoch(hb.assignments(0), 2, 0.1)->stop());  // epoch 2 is no rung
  auto info = Info(id);
  EXPECT_EQ(info.runs(2).state(), v1::RUN_CANCELLED);
  EXPECT_THAT(info.runs(2).message(), HasSubstr("stopped early at epoch 1"));
  ASSERT_TRUE(Complete(hb.assignments(0), 0.5).ok());
  ASSERT_TRUE(Complete(hb.assignments(1), 0.6).ok());
  auto results = *core_->Results(id);
  EXPECT_EQ(results.state(), v1::EXPERIMENT_SUCCEEDED);
  EXPECT_EQ(results.trials(2).state(), "STOPPED");
  EXPECT_EQ(results.best_trial(), 1);
}

TEST_F(CoordinatorTest, FinalFitTrainsTheBestTrialOnAllSubjectsThenRegistersIt) {
  const std::string id =
      Submit(Spec("final_fit: true\ncv: {only: [1, 2]}\nsearch: {algorithm: grid, concurrent: 2, "
                  "space: {train.lr: {choice: ['0.1', '0.01']}}}\n"));
  Register("w1", 4);
  const auto hb = Beat("w1", 4);
  ASSERT_EQ(hb.assignments_size(), 4);
  for (const auto& a : hb.assignments()) {
    ASSERT_TRUE(Complete(a, a.trial() == 1 ? 0.8 : 0.4).ok());
    testing::WriteText(artifacts_->RunDir(id, a.trial(), a.fold()) + "/model.pt", "weights");
  }
  // Every trial is done, but the experiment is not: the final fit of trial 1 is queued.
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_RUNNING);
  const auto next = Beat("w1", 1);
  ASSERT_EQ(next.assignments_size(), 1);
  EXPECT_EQ(next.assignments(0).trial(), 1);
  EXPECT_EQ(next.assignments(0).fold(), 0);
  EXPECT_EQ(next.assignments(0).spec().train().lr(), 0.01);
  testing::WriteText(artifacts_->RunDir(id, 1, 0) + "/model.pt", "final weights");
  v1::CompleteRunRequest done;
  done.set_run_id(next.assignments(0).run_id());
  done.set_lease_epoch(next.assignments(0).lease_epoch());
  done.mutable_result()->set_test_mean_f1(-1);  // no test part
  ASSERT_TRUE(core_->Complete(done).ok());
  auto results = *core_->Results(id);
  EXPECT_EQ(results.state(), v1::EXPERIMENT_SUCCEEDED);
  EXPECT_EQ(results.best_trial(), 1);
  EXPECT_NEAR(results.trials(1).mean_f1(), 0.6, 1e-9);  // the final fit does not enter the CV mean
  ASSERT_EQ(results.models_size(), 3);                  // two fold models and the final one
  EXPECT_EQ(results.models(2).fold(), 0);
  EXPECT_EQ(results.models(2).version(), 3);
  EXPECT_NEAR(results.models(2).test_mean_f1(), 0.6, 1e-9);
}

TEST_F(CoordinatorTest, FailedFinalFitFailsTheExperiment) {
  const std::string id = Submit(Spec("final_fit: true\ncv: {only: [1]}\n"));
  Register("w1", 1);
  ASSERT_TRUE(Complete(Beat("w1", 1).assignments(0), 0.5).ok());
  const auto final_fit = Beat("w1", 1).assignments(0);
  ASSERT_EQ(final_fit.fold(), 0);
  ASSERT_TRUE(FailRun(final_fit, "non-finite loss at epoch 2", false).ok());
  auto info = Info(id);
  EXPECT_EQ(info.state(), v1::EXPERIMENT_FAILED);
  EXPECT_THAT(info.message(), HasSubstr("final fit of trial 0: non-finite loss"));
}

TEST_F(CoordinatorTest, ASecondDaemonUnderALiveNameIsRefused) {
  Register("w1", 1);
  v1::RegisterRequest other;
  other.set_name("w1");
  other.set_slots(1);
  other.set_instance("another process");
  EXPECT_EQ(core_->Register(other).status().code(), absl::StatusCode::kAlreadyExists);
  Elapse(10001);  // the first one's lease lapsed: the name is free again
  EXPECT_TRUE(core_->Register(other).ok());
}

// A coordinator paused for longer than a lease, whose first call afterwards is a Register (before
// any Tick), does not hand a live daemon's name to another: the pause is not the daemon's silence.
TEST_F(CoordinatorTest, ARegisterRightAfterAPauseStillSeesTheLiveDaemon) {
  Register("w1", 1);
  Elapse(2000);
  clock_.now += 60000;  // stopped for 60 s, no Tick yet
  v1::RegisterRequest other;
  other.set_name("w1");
  other.set_slots(1);
  other.set_instance("another process");
  EXPECT_EQ(core_->Register(other).status().code(), absl::StatusCode::kAlreadyExists);
  core_->Tick();  // the pause is not counted twice
  EXPECT_FALSE(Beat("w1", 1).reregister());
  Elapse(10001);
  EXPECT_TRUE(core_->Register(other).ok());
}

TEST_F(CoordinatorTest, ARunHandedBackAtShutdownKeepsItsAttempt) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  v1::FailRunRequest req;
  req.set_run_id(a.run_id());
  req.set_lease_epoch(a.lease_epoch());
  req.set_message("worker w1 shut down");
  req.set_retryable(true);
  req.set_released(true);
  ASSERT_TRUE(core_->Fail(req).ok());
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_PENDING);
  EXPECT_EQ(Info(id).runs(0).attempt(), 0);
}

TEST_F(CoordinatorTest, MetricsCountRunsWorkersAndLeaseExpiries) {
  Submit(Spec());
  Register("w1", 2);
  Beat("w1", 2);
  std::string text = PrometheusText(core_->Counters(), hub_->stats());
  EXPECT_THAT(text, HasSubstr("mal_fold_runs{state=\"assigned\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("mal_queue_length 1\n"));
  EXPECT_THAT(text, HasSubstr("mal_workers_alive 1\n"));
  EXPECT_THAT(text, HasSubstr("mal_worker_slots 2\n"));
  EXPECT_THAT(text, HasSubstr("mal_assignments_total 2\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE mal_lease_expiries_total counter\n"));
  Elapse(10001);
  text = PrometheusText(core_->Counters(), hub_->stats());
  EXPECT_THAT(text, HasSubstr("mal_lease_expiries_total 1\n"));
  EXPECT_THAT(text, HasSubstr("mal_runs_lost_total 2\n"));
  EXPECT_THAT(text, HasSubstr("mal_queue_length 3\n"));
  EXPECT_THAT(text, HasSubstr("mal_workers_alive 0\n"));
}

// A coordinator stopped for longer than a lease (SIGSTOP, a suspended VM) does not take its own
// absence for its workers': their leases run on from where they were when it stopped.
TEST_F(CoordinatorTest, ACoordinatorPauseIsNotHeldAgainstItsWorkers) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  Elapse(4000);  // w1 silent for 4 s, then the coordinator is stopped for 60 s
  clock_.now += 60000;
  core_->Tick();
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_ASSIGNED);
  EXPECT_FALSE(Beat("w1", 0, {a}).reregister());
  // The lease itself still holds: a worker silent for a lease after the pause loses its run.
  Elapse(10001);
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_PENDING);
  // And silence before the pause counts: 4 s before it and 6.5 s after it lapse a 10 s lease.
  Register("w2", 1);
  const auto b = Beat("w2", 1).assignments(0);
  EXPECT_EQ(b.run_id(), a.run_id());
  Elapse(4000);
  clock_.now += 60000;
  core_->Tick();
  Elapse(5500);
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_ASSIGNED);
  Elapse(1000);
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_FAILED);  // past max_restarts (1)
}

// The shortest lease the server accepts (twice a 10 ms heartbeat) is shorter than four tick
// periods (ticks are at least 50 ms apart): regular ticks are not a pause, and the lease lapses.
TEST_F(CoordinatorTest, ShortLeasesStillLapseBetweenRegularTicks) {
  lease_ms_ = 20;
  heartbeat_ms_ = 10;
  Reopen();
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  Beat("w1", 1);
  Elapse(50);
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_PENDING);
}

TEST_F(CoordinatorTest, WorkersAreSharedByPriority) {
  const std::string low = Submit(Spec("priority: 0\ncv: {protocol: kfold, folds: 8}\n"));
  const std::string high = Submit(Spec("priority: 2\ncv: {protocol: kfold, folds: 8}\n"));
  Register("w1", 8);
  int to_high = 0, to_low = 0;
  const auto hb = Beat("w1", 8);
  for (const auto& a : hb.assignments()) (a.experiment_id() == high ? to_high : to_low)++;
  // Weighted fair share: weights 3 and 1.
  EXPECT_EQ(to_high, 6);
  EXPECT_EQ(to_low, 2);
}

TEST_F(CoordinatorTest, RestartKeepsStateAndHonoursClaimsForOneLease) {
  const std::string id = Submit(Spec());
  Register("w1", 1);
  Register("w2", 1);
  const auto a1 = Beat("w1", 1).assignments(0);
  const auto a2 = Beat("w2", 1).assignments(0);
  ASSERT_TRUE(Report(a1, 1, 2).ok());
  const int64_t events_before = *store_->LastEventSeq(id);
  Reopen();  // the coordinator was killed and restarted
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_RUNNING);
  // w1 re-registers claiming its run and keeps it; w2 never comes back.
  EXPECT_TRUE(Beat("w1", 0, {a1}).reregister());
  Register("w1", 1, {[&] {
             v1::RunClaim c;
             c.set_run_id(a1.run_id());
             c.set_lease_epoch(a1.lease_epoch());
             return c;
           }()});
  ASSERT_TRUE(Report(a1, 3, 1).ok());
  Elapse(5000);
  Beat("w1", 0, {a1});
  Elapse(5001);
  auto info = Info(id);
  EXPECT_EQ(info.runs(0).state(), v1::RUN_RUNNING);
  EXPECT_EQ(info.runs(1).state(), v1::RUN_PENDING);  // w2's run was lost
  EXPECT_EQ(info.runs(1).attempt(), 1);
  EXPECT_EQ(Report(a2, 1, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_GT(*store_->LastEventSeq(id), events_before);
  Events(id);  // no gap across the restart
}

TEST_F(CoordinatorTest, RestartFinishesWhatACrashInterrupted) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  // The run completed, but the coordinator died before settling the trial: simulate by
  // completing through the store directly.
  ASSERT_TRUE(
      store_->Complete(a.run_id(), a.lease_epoch(), v1::FoldResult().SerializeAsString()).ok());
  Reopen();
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_SUCCEEDED);
  int ends = 0;
  for (const auto& e : Events(id)) ends += e.has_end();
  EXPECT_EQ(ends, 1);
  Reopen();  // and a second restart publishes nothing again
  ends = 0;
  for (const auto& e : Events(id)) ends += e.has_end();
  EXPECT_EQ(ends, 1);
}

// The worker's completion was recorded, then the coordinator died before replying: the retry,
// after the restart and the worker's new registration, passes Authenticate as a completion only
// and is answered OK without a second result; any other call for the run is still refused.
TEST_F(CoordinatorTest, ARetriedCompletionAfterARestartIsAnsweredAsDone) {
  const std::string id = Submit(Spec("cv: {only: [1, 2]}\n"));
  Register("w1", 2);
  const auto hb = Beat("w1", 2);
  ASSERT_EQ(hb.assignments_size(), 2);
  const auto a = hb.assignments(0);
  ASSERT_TRUE(Complete(a, 0.8).ok());
  Reopen();
  v1::RegisterRequest req;
  req.set_name("w1");
  req.set_slots(2);
  req.set_instance("i-w1-again");
  v1::RunClaim* claim = req.add_running();
  claim->set_run_id(a.run_id());
  claim->set_lease_epoch(a.lease_epoch());
  auto registered = core_->Register(req);
  ASSERT_TRUE(registered.ok()) << registered.status();
  ASSERT_EQ(registered->drop_size(), 1);  // the claim on a finished run is not honoured
  const Coordinator::WorkerCaller caller{"w1", registered->session()};
  EXPECT_EQ(core_->Authenticate(caller, a.run_id()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(core_->Authenticate(caller, a.run_id(), false, /*completion=*/true).ok());
  EXPECT_FALSE(core_->Authenticate({"w2", registered->session()}, a.run_id(), false, true).ok());
  EXPECT_TRUE(Complete(a, 0.8).ok());
  v1::CompleteRunRequest stale;
  stale.set_run_id(a.run_id());
  stale.set_lease_epoch(a.lease_epoch() + 1);
  EXPECT_FALSE(core_->Complete(stale).ok());
  int results = 0;
  for (const auto& e : Events(id)) results += e.has_fold_result();
  EXPECT_EQ(results, 1);
}

// A run's result and its fold_result and SUCCEEDED events commit together: when the events cannot
// be written, the completion is refused and nothing changed (the run is still held, the worker
// retries); a coordinator killed between the two used to keep the result without its events.
TEST_F(CoordinatorTest, ACompletionWhoseEventsCannotBeWrittenIsRefusedAndChangesNothing) {
  const std::string id = Submit(Spec("cv: {only: [1, 2]}\n"));
  Register("w1", 2);
  const auto hb = Beat("w1", 2);
  ASSERT_EQ(hb.assignments_size(), 2);
  const auto a = hb.assignments(0);
  auto watch = hub_->Subscribe(id, *hub_->LastSeq(id) + 1);
  ASSERT_TRUE(watch.ok());
  ExecSql(
      "CREATE TRIGGER refuse_events BEFORE INSERT ON events BEGIN "
      "SELECT RAISE(ABORT, 'disk full'); END");
  const int64_t before = *store_->LastEventSeq(id);
  EXPECT_FALSE(Complete(a, 0.8).ok());
  EXPECT_EQ(store_->Run(a.run_id())->state, RunState::kAssigned);
  EXPECT_EQ(store_->Run(a.run_id())->result, "");
  EXPECT_EQ(*store_->LastEventSeq(id), before);
  EXPECT_EQ(Info(id).runs(0).state(), v1::RUN_ASSIGNED);
  EXPECT_FALSE(FailRun(hb.assignments(1), "crashed", /*retryable=*/true).ok());
  EXPECT_EQ(store_->Run(hb.assignments(1).run_id())->state, RunState::kAssigned);
  ExecSql("DROP TRIGGER refuse_events");

  ASSERT_TRUE(Complete(a, 0.8).ok());
  // The watcher saw them live, in order, once.
  auto first = (*watch)->Next(absl::Seconds(1));
  ASSERT_TRUE(first.ok() && first->has_value());
  EXPECT_EQ((*first)->kind, "fold_result");
  EXPECT_EQ((*first)->seq, before + 1);
  auto second = (*watch)->Next(absl::Seconds(1));
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_EQ((*second)->seq, before + 2);
  watch->reset();
  Reopen();
  std::vector<std::string> kinds;
  for (const auto& e : Events(id)) {
    if (e.run_id() != a.run_id()) continue;
    kinds.push_back(e.has_fold_result() ? "fold_result" : e.state().state());
  }
  EXPECT_THAT(kinds, ::testing::ElementsAre("ASSIGNED", "fold_result", "SUCCEEDED"));
}

// A trial's state and its trial_result, and the experiment's end with its state event and End,
// are one transaction each. When they cannot be written (a full disk), none of them is, the
// experiment does not end over the unwritten trial, and Tick settles both once they can be.
TEST_F(CoordinatorTest, ASettlementThatCannotBeWrittenIsNeverHalfDoneAndIsTriedAgain) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  auto stored_state = [&] {
    const std::vector<ExperimentRow> rows = *store_->Experiments();
    for (const ExperimentRow& row : rows)
      if (row.id == id) return row.state;
    return -1;
  };
  ExecSql(
      "CREATE TRIGGER refuse_settlement BEFORE INSERT ON events WHEN NEW.kind IN ('trial_result', "
      "'end') BEGIN SELECT RAISE(ABORT, 'disk full'); END");
  ASSERT_TRUE(Complete(a, 0.8).ok());  // the run's own events are written
  EXPECT_EQ(store_->Run(a.run_id())->state, RunState::kSucceeded);
  EXPECT_EQ((*store_->Trials(id))[0].state, "");
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_RUNNING);
  Elapse(6000);  // tried again, refused again
  EXPECT_EQ((*store_->Trials(id))[0].state, "");
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_RUNNING);
  ExecSql("DROP TRIGGER refuse_settlement");
  ExecSql(
      "CREATE TRIGGER refuse_end BEFORE INSERT ON events WHEN NEW.kind = 'end' BEGIN "
      "SELECT RAISE(ABORT, 'disk full'); END");
  Elapse(6000);  // the trial settles; the end is refused with its state event
  EXPECT_EQ((*store_->Trials(id))[0].state, "SUCCEEDED");
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_RUNNING);
  EXPECT_EQ(stored_state(), v1::EXPERIMENT_RUNNING);
  ExecSql("DROP TRIGGER refuse_end");
  Elapse(6000);
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_SUCCEEDED);
  EXPECT_EQ(stored_state(), v1::EXPERIMENT_SUCCEEDED);
  Reopen();
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_SUCCEEDED);
  std::vector<std::string> settled;  // the experiment-level events, once each, in order
  for (const auto& e : Events(id)) {
    if (e.has_trial_result()) settled.push_back("trial_result");
    if (e.has_state() && e.state().scope() == "experiment") settled.push_back(e.state().state());
    if (e.has_end()) settled.push_back("end");
  }
  EXPECT_THAT(settled, ::testing::ElementsAre("RUNNING", "trial_result", "SUCCEEDED", "end"));
}

// A cancel is one transaction with the experiment's end: when the end cannot be written (a full
// disk) the cancel is refused and nothing changes; once it can, the experiment is CANCELLED at
// once, without its final fit.
TEST_F(CoordinatorTest, ACancelIsWrittenWithTheEndOrNotAtAll) {
  const std::string id =
      Submit(Spec("final_fit: true\ncv: {only: [1]}\nsearch: {algorithm: grid, space: {train.lr: "
                  "{choice: ['0.1', '0.01']}}}\n"));
  Register("w1", 1);
  ASSERT_TRUE(Complete(Beat("w1", 1).assignments(0), 0.5).ok());  // trial 0 succeeded
  ExecSql(
      "CREATE TRIGGER refuse_end BEFORE INSERT ON events WHEN NEW.kind = 'end' BEGIN "
      "SELECT RAISE(ABORT, 'disk full'); END");
  const int64_t before = *store_->LastEventSeq(id);
  auto info = core_->Cancel(id);
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(std::string(info.status().message()),
              HasSubstr(id + ": refused, nothing changed: state store: appending an event: "
                             "disk full"));
  info = core_->Get(id);
  EXPECT_EQ(info->state(), v1::EXPERIMENT_RUNNING);
  for (const auto& r : info->runs()) EXPECT_NE(r.state(), v1::RUN_CANCELLED);
  EXPECT_EQ(*store_->LastEventSeq(id), before);
  ExecSql("DROP TRIGGER refuse_end");
  info = core_->Cancel(id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::EXPERIMENT_CANCELLED);
  for (const auto& r : info->runs())
    EXPECT_EQ(r.state(), r.fold() == 1 && r.trial() == 0 ? v1::RUN_SUCCEEDED : v1::RUN_CANCELLED);
  Elapse(6000);
  info = core_->Get(id);
  EXPECT_EQ(info->runs_size(), 2);  // no final fit added
  EXPECT_EQ(Beat("w1", 1).assignments_size(), 0);
  Reopen();
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_CANCELLED);
  EXPECT_EQ(Events(id).back().end().state(), v1::EXPERIMENT_CANCELLED);
  EXPECT_EQ(Events(id).back().end().best_trial(), 0);
}

// A cancel after every trial settled and before the final fit was added (its run could not be
// written: a full disk) cancels no run or trial; it used to be lost: the experiment then
// SUCCEEDED with a model, or started the final fit after the cancel (found by a kill probe).
TEST_F(CoordinatorTest, ACancelBeforeTheFinalFitWasAddedEndsTheExperimentCancelled) {
  const std::string id = Submit(Spec("final_fit: true\ncv: {only: [1]}\n"));
  Register("w1", 1);
  ExecSql(
      "CREATE TRIGGER refuse_final_fit BEFORE INSERT ON fold_runs WHEN NEW.fold = 0 BEGIN "
      "SELECT RAISE(ABORT, 'disk full'); END");
  testing::WriteText(artifacts_->RunDir(id, 0, 1) + "/model.pt", "fold weights");
  ASSERT_TRUE(Complete(Beat("w1", 1).assignments(0), 0.5).ok());
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_RUNNING);  // waiting to add the final fit
  auto info = core_->Cancel(id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::EXPERIMENT_CANCELLED);
  ExecSql("DROP TRIGGER refuse_final_fit");
  Elapse(6000);
  EXPECT_EQ(Info(id).runs_size(), 1);
  EXPECT_EQ(Beat("w1", 1).assignments_size(), 0);
  Reopen();
  auto results = *core_->Results(id);
  EXPECT_EQ(results.state(), v1::EXPERIMENT_CANCELLED);
  EXPECT_EQ(results.models_size(), 0);
  int ends = 0;
  for (const auto& e : Events(id)) ends += e.has_end();
  EXPECT_EQ(ends, 1);
}

// An experiment's models are registered in its end's transaction: none while the end cannot be
// written (a full disk), so a cancel meanwhile leaves it CANCELLED with no model (they used to be
// registered first, and stayed); a registration that fails leaves it RUNNING, ended with its
// model at a later Tick.
TEST_F(CoordinatorTest, ModelsAreRegisteredWithTheEndOrNotAtAll) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  testing::WriteText(artifacts_->RunDir(id, 0, 1) + "/model.pt", "fold weights");
  ExecSql(
      "CREATE TRIGGER refuse_end BEFORE INSERT ON events WHEN NEW.kind = 'end' BEGIN "
      "SELECT RAISE(ABORT, 'disk full'); END");
  ASSERT_TRUE(Complete(Beat("w1", 1).assignments(0), 0.5).ok());
  Elapse(6000);
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_RUNNING);
  EXPECT_TRUE(store_->Models(id)->empty());
  ExecSql("DROP TRIGGER refuse_end");
  ASSERT_TRUE(core_->Cancel(id).ok());
  Elapse(6000);
  Reopen();
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_CANCELLED);
  EXPECT_TRUE(store_->Models(id, /*include_deleted=*/true)->empty());

  const std::string second = Submit(Spec("cv: {only: [1]}\n"));
  testing::WriteText(artifacts_->RunDir(second, 0, 1) + "/model.pt", "fold weights");
  Register("w2", 1);  // w1's lease lapsed meanwhile
  ExecSql(
      "CREATE TRIGGER refuse_model BEFORE INSERT ON models BEGIN SELECT RAISE(ABORT, 'disk "
      "full'); END");
  const auto hb = Beat("w2", 1);
  ASSERT_EQ(hb.assignments_size(), 1);
  ASSERT_TRUE(Complete(hb.assignments(0), 0.5).ok());
  EXPECT_EQ(Info(second).state(), v1::EXPERIMENT_RUNNING);
  EXPECT_FALSE(Events(second).back().has_end());
  ExecSql("DROP TRIGGER refuse_model");
  Elapse(6000);
  EXPECT_EQ(Info(second).state(), v1::EXPERIMENT_SUCCEEDED);
  ASSERT_EQ(store_->Models(second)->size(), 1u);
  EXPECT_EQ((*store_->Models(second))[0].fold, 1);
  Reopen();
  EXPECT_EQ(store_->Models(second)->size(), 1u);
  int ends = 0;
  for (const auto& e : Events(second)) ends += e.has_end();
  EXPECT_EQ(ends, 1);
}

// A trial stopped early whose STOPPED state was lost to a crash after its runs were cancelled:
// the restart settles it as STOPPED and the experiment ends (it used to wait for ever).
TEST_F(CoordinatorTest, ARestartSettlesATrialStoppedBeforeItsStateWasWritten) {
  const std::string id =
      Submit(Spec("cv: {only: [1]}\nsearch: {algorithm: grid, concurrent: 2, "
                  "space: {train.lr: {choice: ['0.1', '0.01']}}}\n"));
  Register("w1", 2);
  const auto hb = Beat("w1", 2);
  ASSERT_EQ(hb.assignments_size(), 2);
  ASSERT_TRUE(Complete(hb.assignments(0), 0.6).ok());
  // What StopTrial's cancellation wrote before the crash, without the trial's state.
  ASSERT_TRUE(
      store_->Cancel(hb.assignments(1).run_id(), "stopped early at epoch 1 of fold 1").ok());
  Reopen();
  auto results = *core_->Results(id);
  EXPECT_EQ(results.state(), v1::EXPERIMENT_SUCCEEDED);
  ASSERT_EQ(results.trials_size(), 2);
  EXPECT_EQ(results.trials(1).state(), "STOPPED");
  EXPECT_EQ(results.trials(1).message(), "stopped early at epoch 1 of fold 1");
  EXPECT_EQ(results.best_trial(), 0);
}

// A crash after a fold run failed for good and before its trial was settled: the restart's one
// pass over the runs (SettleAll) fails the trial, cancels its fold still running, publishes its
// trial_result with the folds it has, and leaves the other trials as they were.
TEST_F(CoordinatorTest, ARestartFailsATrialWhoseFoldFailedBeforeTheCrashAndCancelsItsOthers) {
  const std::string id =
      Submit(Spec("cv: {only: [1, 2]}\nsearch: {algorithm: grid, concurrent: 3, space: {train.lr: "
                  "{choice: ['0.1', '0.01', '0.001']}}}\n"));
  Register("w1", 6);
  const auto hb = Beat("w1", 6);
  ASSERT_EQ(hb.assignments_size(), 6);
  int64_t still_running = 0;
  for (const auto& a : hb.assignments()) {
    if (a.trial() == 0) {
      ASSERT_TRUE(Complete(a, 0.6).ok());
    } else if (a.trial() == 1 && a.fold() == 1) {
      // What the worker's failure wrote before the crash, without the settling that follows.
      ASSERT_TRUE(
          store_->Transition(a.run_id(), a.lease_epoch(), RunState::kFailed, "non-finite loss")
              .ok());
    } else if (a.trial() == 1) {
      still_running = a.run_id();
    }
  }
  ASSERT_NE(still_running, 0);
  Reopen();
  auto results = *core_->Results(id);
  ASSERT_EQ(results.trials_size(), 3);
  EXPECT_EQ(results.trials(0).state(), "SUCCEEDED");
  EXPECT_EQ(results.trials(1).state(), "FAILED");
  EXPECT_EQ(results.trials(2).state(), "");  // still training
  const v1::ExperimentInfo info = Info(id);
  for (const auto& run : info.runs()) {
    if (run.id() == still_running) {
      EXPECT_EQ(run.state(), v1::RUN_CANCELLED);
      EXPECT_EQ(run.message(), "another fold of the trial failed");
    } else if (run.trial() == 2) {
      EXPECT_NE(run.state(), v1::RUN_CANCELLED);
    }
  }
  std::map<int, int> published;  // trial -> trial_result events
  v1::TrialResult failed;
  for (const v1::Event& e : Events(id)) {
    if (!e.has_trial_result()) continue;
    ++published[e.trial_result().trial()];
    if (e.trial_result().trial() == 1) failed = e.trial_result();
  }
  EXPECT_THAT(published, ::testing::ElementsAre(::testing::Pair(0, 1), ::testing::Pair(1, 1)));
  EXPECT_EQ(failed.state(), "FAILED");
  EXPECT_THAT(failed.message(), ::testing::HasSubstr("non-finite loss"));
}

// A log written before a trial's state and its trial_result were one transaction: the
// trial_result went out, the state write was lost. The restart settles the trial as the event
// announced (state and message), publishes no second trial_result, and ends the experiment.
TEST_F(CoordinatorTest, ARestartSettlesATrialAsItsPublishedTrialResultSaid) {
  const std::string id = Submit(Spec("cv: {only: [1]}\n"));
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  v1::FoldResult result;
  result.set_test_mean_f1(0.7);
  ASSERT_TRUE(store_->Complete(a.run_id(), a.lease_epoch(), result.SerializeAsString()).ok());
  v1::Event announced;
  announced.mutable_trial_result()->set_trial(0);
  announced.mutable_trial_result()->set_state("SUCCEEDED");
  announced.mutable_trial_result()->set_message("as announced");
  announced.mutable_trial_result()->set_mean_f1(0.7);
  ASSERT_TRUE(store_->AppendEvent(id, "trial_result", announced.SerializeAsString()).ok());
  Reopen();
  const std::vector<TrialRow> trials = *store_->Trials(id);
  ASSERT_EQ(trials.size(), 1u);
  EXPECT_EQ(trials[0].state, "SUCCEEDED");
  EXPECT_EQ(trials[0].message, "as announced");
  EXPECT_EQ(Info(id).state(), v1::EXPERIMENT_SUCCEEDED);
  int results = 0;
  for (const auto& e : Events(id)) results += e.has_trial_result();
  EXPECT_EQ(results, 1);
}

// A crash after the fold model was registered and before the final fit's: the restart registers
// the final fit (version 2), not nothing (it used to see "models exist" and skip them all), and a
// second restart registers nothing more.
TEST_F(CoordinatorTest, ARestartRegistersTheModelsACrashLeftUnregistered) {
  const std::string id = Submit(Spec("final_fit: true\ncv: {only: [1]}\n"));
  Register("w1", 1);
  const auto fold = Beat("w1", 1).assignments(0);
  testing::WriteText(artifacts_->RunDir(id, 0, 1) + "/model.pt", "fold weights");
  ASSERT_TRUE(Complete(fold, 0.8).ok());
  const auto fit = Beat("w1", 1).assignments(0);
  ASSERT_EQ(fit.fold(), 0);
  testing::WriteText(artifacts_->RunDir(id, 0, 0) + "/model.pt", "final weights");
  v1::FoldResult no_test;
  no_test.set_test_mean_f1(-1);
  ASSERT_TRUE(store_->Complete(fit.run_id(), fit.lease_epoch(), no_test.SerializeAsString()).ok());
  ModelRow first;
  first.name = "unit";
  first.experiment_id = id;
  first.fold = 1;
  first.test_mean_f1 = 0.6;
  first.artifact = *artifacts_->Find(id, 0, 1, "model.pt");
  ASSERT_TRUE(store_->RegisterModel(first).ok());
  Reopen();
  auto results = *core_->Results(id);
  EXPECT_EQ(results.state(), v1::EXPERIMENT_SUCCEEDED);
  ASSERT_EQ(results.models_size(), 2);
  EXPECT_EQ(results.models(0).fold(), 1);
  EXPECT_EQ(results.models(1).fold(), 0);
  EXPECT_EQ(results.models(1).version(), 2);
  Reopen();
  EXPECT_EQ(core_->Results(id)->models_size(), 2);
}

// train.oom_retries: the engine starts the run over with halved batches. The worker forwards
// the restart; it is logged between the larger batches' events and the new ones, and the run's
// epoch counts from 0 again (also after a coordinator restart, from the log).
TEST_F(CoordinatorTest, ARestartIsLoggedAndTheRunsEpochCountsAgain) {
  const std::string id = Submit(Spec());
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  v1::ReportEventsRequest req = ReportFor(a, 1);
  req.add_events()->mutable_epoch()->set_epoch(2);
  v1::RunRestart* r = req.add_events()->mutable_restart();
  r->set_batch_au(16);
  r->set_halving(1);
  r->set_reason("out of memory on cuda:0 with batch 32 AU");
  ASSERT_TRUE(core_->ReportEvents(req).ok());
  auto run_epoch = [&]() {
    const v1::ExperimentInfo info = Info(id);
    for (const auto& run : info.runs())
      if (run.id() == a.run_id()) return run.epoch();
    return -1;
  };
  EXPECT_EQ(run_epoch(), 0);
  int restarts = 0;
  for (const auto& e : Events(id)) {
    if (!e.has_restart()) continue;
    ++restarts;
    EXPECT_EQ(e.restart().batch_au(), 16);
    EXPECT_EQ(e.run_id(), a.run_id());
  }
  EXPECT_EQ(restarts, 1);
  Reopen();  // the coordinator restarted: the epoch comes from the event log
  EXPECT_EQ(run_epoch(), 0);
}

TEST_F(CoordinatorTest, WorkersCannotSendCoordinatorEvents) {
  Submit(Spec());
  Register("w1", 1);
  const auto a = Beat("w1", 1).assignments(0);
  v1::ReportEventsRequest req = ReportFor(a, 1);
  req.add_events()->mutable_end();
  EXPECT_EQ(core_->ReportEvents(req).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mal::server
