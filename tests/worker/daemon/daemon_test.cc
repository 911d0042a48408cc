// The worker daemon against a fake coordinator (no sockets) and shell-script engine doubles
// that speak the event pipe: what it reports for each way a run can end.

#include "worker/daemon/daemon.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "worker/daemon/daemon_impl.h"

namespace mal::worker {
namespace {

using std::chrono::milliseconds;
using ::testing::Contains;
using ::testing::HasSubstr;

// Hands out queued assignments on heartbeats and records every call.
class FakeCoordinator : public CoordinatorClient {
 public:
  void Assign(int64_t run_id, int fold, bool has_checkpoint = false, int attempt = 0) {
    absl::MutexLock lock(&mu_);
    v1::Assignment a;
    a.set_run_id(run_id);
    a.set_attempt(attempt);
    a.set_lease_epoch(7);
    a.set_experiment_id("e-1");
    a.set_fold(fold);
    a.set_has_checkpoint(has_checkpoint);
    a.mutable_spec()->set_name("fake");
    queued_.push_back(a);
  }
  void Revoke(int64_t run_id) {
    absl::MutexLock lock(&mu_);
    v1::RunClaim c;
    c.set_run_id(run_id);
    c.set_lease_epoch(7);
    drops_.push_back(c);
  }
  grpc::Status Register(const v1::RegisterRequest& request, v1::RegisterResponse* response,
                        milliseconds) override {
    absl::MutexLock lock(&mu_);
    ++registered_;
    response->set_heartbeat_ms(20);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(const v1::HeartbeatRequest& request, v1::HeartbeatResponse* response,
                         milliseconds) override {
    absl::MutexLock lock(&mu_);
    running_claims_ = request.running_size();
    for (int i = 0; i < request.free_slots() && !queued_.empty(); ++i) {
      *response->add_assignments() = queued_.front();
      queued_.erase(queued_.begin());
    }
    for (const auto& d : drops_) *response->add_drop() = d;
    drops_.clear();
    return grpc::Status::OK;
  }
  grpc::Status ReportEvents(const v1::ReportEventsRequest& request, v1::ReportEventsResponse*,
                            milliseconds) override {
    absl::MutexLock lock(&mu_);
    if (away_) return Away();
    if (on_report_) on_report_(request);
    ++reports_;
    for (const auto& e : request.events()) events_.push_back(e);
    return grpc::Status::OK;
  }
  grpc::Status CompleteRun(const v1::CompleteRunRequest& request, milliseconds) override {
    absl::MutexLock lock(&mu_);
    if (away_) return Away();
    ++completion_calls_;
    if (lost_completion_replies_ > 0) {
      // The completion is recorded, but its reply is lost (the coordinator died before
      // answering); the restarted coordinator no longer holds the run for this worker.
      --lost_completion_replies_;
      if (completed_.empty()) completed_.push_back(request);
      v1::RunClaim c;
      c.set_run_id(request.run_id());
      c.set_lease_epoch(request.lease_epoch());
      drops_.push_back(c);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the reply was lost");
    }
    if (completed_.empty() || completed_.back().run_id() != request.run_id())
      completed_.push_back(request);
    return grpc::Status::OK;
  }
  grpc::Status FailRun(const v1::FailRunRequest& request, milliseconds) override {
    absl::MutexLock lock(&mu_);
    failed_.push_back(request);
    return grpc::Status::OK;
  }
  grpc::Status Upload(int64_t, int64_t, const std::string& name, const std::string& path,
                      milliseconds) override {
    absl::MutexLock lock(&mu_);
    if (away_) return Away();
    if (on_upload_) on_upload_(name);
    if (throw_on_upload_) {
      throw_on_upload_ = false;
      throw std::runtime_error("an unforeseen error while uploading " + name);
    }
    if (auto it = refuse_upload_.find(name); it != refuse_upload_.end() && it->second.second != 0) {
      if (it->second.second > 0) --it->second.second;
      return it->second.first;
    }
    uploads_.push_back(name);
    uploaded_.emplace_back(name, ReadFile(path).value_or(""));
    if (name == "log.txt") uploaded_log_ = uploaded_.back().second;
    return grpc::Status::OK;
  }
  grpc::Status Fetch(int64_t, const std::string& name, const std::string& path,
                     milliseconds) override {
    absl::MutexLock lock(&mu_);
    fetched_.push_back(name);
    auto it = stored_.find(name);
    if (it == stored_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, name);
    testing::WriteText(path, it->second);
    return grpc::Status::OK;
  }

  // Waits (up to 20 s) until a run completed or failed.
  bool WaitForOutcome() {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !completed_.empty() || !failed_.empty();
    };
    return mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(20));
  }
  bool WaitForClaims(int n) {
    absl::MutexLock lock(&mu_);
    auto claimed = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_claims_ == n; };
    return mu_.AwaitWithTimeout(absl::Condition(&claimed), absl::Seconds(20));
  }

  grpc::Status Away() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (first_refused_ == absl::InfiniteFuture()) first_refused_ = absl::Now();
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "away");
  }

  absl::Mutex mu_;
  // The run's calls (events, uploads, completion) fail as UNAVAILABLE, as with a coordinator that
  // went away; heartbeats still work.
  bool away_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time first_refused_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();  // a call while away
  // The next Upload throws (as a defect in the daemon's handling of a run would).
  bool throw_on_upload_ ABSL_GUARDED_BY(mu_) = false;
  // Uploads of a file refused with a status, so many times (-1: always).
  std::map<std::string, std::pair<grpc::Status, int>> refuse_upload_ ABSL_GUARDED_BY(mu_);
  // Called with every ReportEvents request (the first of a run, with no events, says it started).
  std::function<void(const v1::ReportEventsRequest&)> on_report_ ABSL_GUARDED_BY(mu_);
  // Called with each upload's name before it is taken (mu_ held).
  std::function<void(const std::string&)> on_upload_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::Assignment> queued_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::RunClaim> drops_ ABSL_GUARDED_BY(mu_);
  int registered_ ABSL_GUARDED_BY(mu_) = 0;
  int reports_ ABSL_GUARDED_BY(mu_) = 0;
  int running_claims_ ABSL_GUARDED_BY(mu_) = -1;
  std::vector<v1::Event> events_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::CompleteRunRequest> completed_ ABSL_GUARDED_BY(mu_);
  // CompleteRun records the run but answers UNAVAILABLE and drops it, so many times.
  int lost_completion_replies_ ABSL_GUARDED_BY(mu_) = 0;
  int completion_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<v1::FailRunRequest> failed_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> uploads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, std::string>> uploaded_ ABSL_GUARDED_BY(mu_);  // name, bytes
  std::string uploaded_log_ ABSL_GUARDED_BY(mu_);                   // the last upload of log.txt
  std::map<std::string, std::string> stored_ ABSL_GUARDED_BY(mu_);  // what Fetch finds, by name
  std::vector<std::string> fetched_ ABSL_GUARDED_BY(mu_);
};

// Lends the test's fake to a daemon, which owns its client.
class Lent : public CoordinatorClient {
 public:
  explicit Lent(CoordinatorClient* c) : c_(c) {}
  grpc::Status Register(const v1::RegisterRequest& q, v1::RegisterResponse* r,
                        milliseconds t) override {
    return c_->Register(q, r, t);
  }
  grpc::Status Heartbeat(const v1::HeartbeatRequest& q, v1::HeartbeatResponse* r,
                         milliseconds t) override {
    return c_->Heartbeat(q, r, t);
  }
  grpc::Status ReportEvents(const v1::ReportEventsRequest& q, v1::ReportEventsResponse* r,
                            milliseconds t) override {
    return c_->ReportEvents(q, r, t);
  }
  grpc::Status CompleteRun(const v1::CompleteRunRequest& q, milliseconds t) override {
    return c_->CompleteRun(q, t);
  }
  grpc::Status FailRun(const v1::FailRunRequest& q, milliseconds t) override {
    return c_->FailRun(q, t);
  }
  grpc::Status Upload(int64_t run, int64_t epoch, const std::string& name, const std::string& path,
                      milliseconds t) override {
    return c_->Upload(run, epoch, name, path, t);
  }
  grpc::Status Fetch(int64_t run, const std::string& name, const std::string& path,
                     milliseconds t) override {
    return c_->Fetch(run, name, path, t);
  }

 private:
  CoordinatorClient* const c_;
};

class DaemonTest : public ::testing::Test {
 protected:
  // Starts a daemon whose engine is a shell script with `body` (the engine's arguments in "$@";
  // fd 3 is the event pipe; $OUT is the output directory).
  void Start(const std::string& body) {
    const std::string engine = dir_ / "engine.sh";
    {
      std::ofstream f(engine);
      f << "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --out ] && OUT=$2; shift; done\n"
        << body << "\n";
    }
    ::chmod(engine.c_str(), 0755);
    DaemonOptions o;
    o.coordinator = "fake:0";
    o.work_dir = dir_ / "work";
    o.name = "w1";
    o.engine = engine;
    o.threads = 1;
    o.stop_grace_s = stop_grace_s_;
    o.stall_timeout_s = stall_timeout_s_;
    o.upload_every_s = 1;
    o.keep_failed_runs = keep_failed_runs_;
    thread_ = std::thread(
        [this, o]() { rc_ = RunDaemon(o, &stop_, std::make_unique<Lent>(fake_.get())); });
  }
  void TearDown() override {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Tells the daemon to stop (as SIGTERM would) from inside the report that shows a run reached
  // `when`: its start (the first report, no events) or its first epoch.
  enum Report { kStartReport, kEpochReport };
  void StopDaemonWhenReported(Report when) {
    absl::MutexLock lock(&fake_->mu_);
    fake_->on_report_ = [this, when](const v1::ReportEventsRequest& r) {
      bool epoch = false;
      for (const auto& e : r.events()) epoch = epoch || e.has_epoch();
      if (when == kStartReport ? r.events_size() == 0 : epoch) stop_ = true;
    };
  }

  // The coordinator goes away (the run's calls fail as UNAVAILABLE) right after it has taken the
  // report with the run's first epoch.
  void GoAwayAfterTheEpochReport() {
    absl::MutexLock lock(&fake_->mu_);
    // Called by the fake with its mutex held.
    fake_->on_report_ = [this](const v1::ReportEventsRequest& r)
                            ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
                              for (const auto& e : r.events()) {
                                if (e.has_epoch()) fake_->away_ = true;
                              }
                            };
  }

  // Trains (an epoch, model.pt, success) while the coordinator refuses model.pt with `refusal` on
  // every try: the run must fail, not complete; its failure.
  v1::FailRunRequest FailureWhenModelRefused(const grpc::Status& refusal);
  // Runs run 11 with an engine that runs the shell lines `training` and then succeeds (an epoch,
  // model.pt, its outcome), stops the daemon, and returns every upload in order (name, bytes);
  // empty unless the run completed once.
  std::vector<std::pair<std::string, std::string>> UploadsOfASucceededRun(
      const std::string& training);

  testing::TempDir dir_;
  std::unique_ptr<FakeCoordinator> fake_ = std::make_unique<FakeCoordinator>();
  std::atomic<bool> stop_{false};
  std::thread thread_;
  int rc_ = -1;
  int stall_timeout_s_ = 1800;  // the daemon's default
  int stop_grace_s_ = 1;
  int keep_failed_runs_ = 10;  // the daemon's default
  bool replaced_ = false;      // ACheckpointWrittenDuringAnUploadGoesUpAtTheNextTick
};

constexpr char kEpoch[] =
    R"(echo '{"epoch":{"epoch":2,"iteration":40,"aus":[1,2],"testF1":[0.5,0.7],"testMeanF1":0.6}}' >&3)";

// An engine body that runs the shell lines `before`, reports epoch 2 (kEpoch), writes model.pt
// and ends with a successful outcome.
std::string TrainsAnEpochAndSucceeds(const std::string& before = "") {
  return before + kEpoch + "\necho model > $OUT/model.pt\necho '{\"outcome\":{}}' >&3\nexit 0";
}

std::vector<std::pair<std::string, std::string>> DaemonTest::UploadsOfASucceededRun(
    const std::string& training) {
  Start(TrainsAnEpochAndSucceeds(training));
  fake_->Assign(11, 1);
  if (!fake_->WaitForOutcome()) return {};
  stop_ = true;
  thread_.join();
  absl::MutexLock lock(&fake_->mu_);
  if (fake_->completed_.size() != 1u) return {};
  return fake_->uploaded_;
}

v1::FailRunRequest DaemonTest::FailureWhenModelRefused(const grpc::Status& refusal) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->refuse_upload_["model.pt"] = {refusal, -1};
  }
  Start(TrainsAnEpochAndSucceeds());
  fake_->Assign(11, 1);
  EXPECT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->completed_.empty());
  EXPECT_EQ(fake_->failed_.size(), 1u);
  return fake_->failed_.empty() ? v1::FailRunRequest() : fake_->failed_[0];
}

TEST_F(DaemonTest, ASucceededEngineCompletesTheRunWithItsLastEpochAndUploadsItsFiles) {
  Start(TrainsAnEpochAndSucceeds());
  fake_->Assign(11, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  stop_ = true;
  thread_.join();
  EXPECT_EQ(rc_, 0);
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->completed_.size(), 1u);
  const v1::FoldResult& r = fake_->completed_[0].result();
  EXPECT_EQ(fake_->completed_[0].run_id(), 11);
  EXPECT_EQ(fake_->completed_[0].lease_epoch(), 7);
  EXPECT_DOUBLE_EQ(r.test_mean_f1(), 0.6);
  EXPECT_EQ(r.epochs(), 2);
  EXPECT_EQ(r.iterations(), 40);
  EXPECT_THAT(fake_->uploads_, Contains("model.pt"));
  EXPECT_THAT(fake_->uploads_, Contains("log.txt"));
  ASSERT_EQ(fake_->events_.size(), 1u);  // the epoch; the outcome stays with the daemon
  EXPECT_TRUE(fake_->events_[0].has_epoch());
  EXPECT_TRUE(fake_->failed_.empty());
}

// A run resumed from a checkpoint written after its last epoch trains no epoch and sends no epoch
// event: its result is the outcome's final_epoch (it was an empty result, recorded as F1 0), which
// also wins over the last epoch event; success with neither is a failure, not a result of 0.
TEST_F(DaemonTest, TheResultIsTheOutcomesFinalEpochAndNeverAnEmptyOne) {
  Start(R"(echo model > $OUT/model.pt
echo '{"outcome":{"finalEpoch":{"epoch":3,"iteration":60,"aus":[1,2],"testF1":[0.4,0.8],"testMeanF1":0.6}}}' >&3
exit 0)");
  fake_->Assign(11, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  {
    absl::MutexLock lock(&fake_->mu_);
    ASSERT_EQ(fake_->completed_.size(), 1u);
    const v1::FoldResult& r = fake_->completed_[0].result();
    EXPECT_DOUBLE_EQ(r.test_mean_f1(), 0.6);
    EXPECT_EQ(r.epochs(), 3);
    EXPECT_EQ(r.iterations(), 60);
    EXPECT_THAT(r.test_f1(), ::testing::ElementsAre(0.4, 0.8));
    EXPECT_THAT(r.aus(), ::testing::ElementsAre(1, 2));
  }
  stop_ = true;
  thread_.join();
}

// A resumed run (its checkpoint on the coordinator) appends to the engine's log of the earlier
// attempts, fetched with the checkpoint: the upload of the new log replaced them.
TEST_F(DaemonTest, AResumedRunKeepsTheLogOfItsEarlierAttempts) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->stored_["checkpoint.pt"] = "weights at epoch 2";
    fake_->stored_["log.txt"] = "epoch 1 of the first attempt\nepoch 2 of the first attempt\n";
  }
  Start(TrainsAnEpochAndSucceeds("echo 'the retry resumes' >&2\n"));
  fake_->Assign(11, 1, /*has_checkpoint=*/true);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->completed_.size(), 1u);
  EXPECT_THAT(fake_->fetched_, Contains("log.txt"));
  EXPECT_THAT(fake_->uploaded_log_, HasSubstr("epoch 1 of the first attempt\nepoch 2 of the first "
                                              "attempt\n"));
  EXPECT_THAT(fake_->uploaded_log_, HasSubstr("the retry resumes"));
}

// A retry back on a host that kept the run's directory (it failed here: .failed) takes the
// coordinator's log, which has the attempts on other hosts in between, not the shorter one here
// (found by a probe: the lines of an attempt elsewhere were lost for good); a log here that
// continues the coordinator's copy (this host's last lines did not go up) is kept.
TEST_F(DaemonTest, ARetryInItsOldDirectoryKeepsTheAttemptsOfOtherHosts) {
  const std::string run = dir_ / "work/runs/e-1/trial-0-fold-1";
  const std::string fold2 = dir_ / "work/runs/e-1/trial-0-fold-2";
  testing::WriteText(run + "/log.txt", "epoch 1 here\n");
  testing::WriteText(run + "/.failed", "engine process killed by signal 9");
  testing::WriteText(fold2 + "/log.txt", "epoch 1 here\nepoch 2 here, not uploaded\n");
  testing::WriteText(fold2 + "/.failed", "engine process killed by signal 9");
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->stored_["checkpoint.pt"] = "weights at epoch 3";
    fake_->stored_["log.txt"] = "epoch 1 here\n";
  }
  Start(TrainsAnEpochAndSucceeds("echo 'attempt resumes' >&2\n"));
  fake_->Assign(12, 2, /*has_checkpoint=*/true, /*attempt=*/1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  {
    absl::MutexLock lock(&fake_->mu_);
    EXPECT_THAT(fake_->uploaded_log_, HasSubstr("epoch 1 here\nepoch 2 here, not uploaded\n"));
    fake_->completed_.clear();
    fake_->stored_["log.txt"] = "epoch 1 here\nepoch 2 elsewhere\nepoch 3 elsewhere\n";
  }
  fake_->Assign(11, 1, /*has_checkpoint=*/true, /*attempt=*/2);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_THAT(fake_->uploaded_log_,
              HasSubstr("epoch 1 here\nepoch 2 elsewhere\nepoch 3 elsewhere\nattempt resumes"));
}

// A retry before the first checkpoint trains from the start, but keeps the earlier attempts' log
// (why they ended) all the same, also on a host whose directory of the run is gone (a revoked or
// pruned run's directory is removed); a first attempt fetches nothing.
TEST_F(DaemonTest, ARetryWithoutACheckpointKeepsTheLogOfItsEarlierAttempts) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->stored_["log.txt"] = "attempt 0: engine process killed by signal 9\n";
  }
  Start(TrainsAnEpochAndSucceeds("echo 'attempt 1 starts over' >&2\n"));
  fake_->Assign(11, 1, /*has_checkpoint=*/false, /*attempt=*/1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->completed_.size(), 1u);
  EXPECT_THAT(fake_->fetched_, ::testing::ElementsAre("log.txt"));
  EXPECT_THAT(fake_->uploaded_log_, HasSubstr("attempt 0: engine process killed by signal 9\n"));
  EXPECT_THAT(fake_->uploaded_log_, HasSubstr("attempt 1 starts over"));
}

TEST_F(DaemonTest, SuccessWithoutTheMetricsOfAnyEpochFailsTheRun) {
  Start("echo model > $OUT/model.pt\necho '{\"outcome\":{}}' >&3\nexit 0");
  fake_->Assign(11, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->completed_.empty());
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_THAT(fake_->failed_[0].message(), HasSubstr("without the metrics of any epoch"));
  EXPECT_FALSE(fake_->failed_[0].retryable());
}

// A file the coordinator refuses for good (over mal-coordinator --max-upload-mb): completing the
// run would leave the coordinator without it, and training again would make the same file, so the
// run fails for good naming the file and the refusal.
TEST_F(DaemonTest, AFileRefusedForGoodFailsATrainedRunNamingIt) {
  const v1::FailRunRequest failed = FailureWhenModelRefused(
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                   "model.pt: over the upload limit of 1 MiB (mal-coordinator --max-upload-mb)"));
  EXPECT_FALSE(failed.retryable());
  EXPECT_THAT(failed.message(),
              HasSubstr("the run trained, but its files did not reach the coordinator: uploading "
                        "model.pt: over the upload limit of 1 MiB"));
}

// A file broken on the way (checksum mismatch, DATA_LOSS, not retried by the call itself): the
// run fails, but retryably, as another attempt would send an intact file.
TEST_F(DaemonTest, AFileBrokenOnTheWayFailsATrainedRunForARetry) {
  const v1::FailRunRequest failed = FailureWhenModelRefused(
      grpc::Status(grpc::StatusCode::DATA_LOSS, "artifact model.pt: checksum mismatch"));
  EXPECT_TRUE(failed.retryable());
  EXPECT_THAT(failed.message(), HasSubstr("uploading model.pt: artifact model.pt: "
                                          "checksum mismatch"));
}

// A checkpoint refused for good at an epoch's end stops the training at once (every later file
// would be refused as well) and fails the run for good, naming the file.
TEST_F(DaemonTest, AFileRefusedForGoodDuringTrainingStopsIt) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->refuse_upload_["checkpoint.pt"] = {
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     "checkpoint.pt: over the upload limit of 1 MiB (mal-coordinator "
                     "--max-upload-mb)"),
        -1};
  }
  const auto start = std::chrono::steady_clock::now();
  // As the engine does, records.csv before any checkpoint (no checkpoint goes up without it).
  Start("echo epoch,iteration > $OUT/records.csv\necho ckpt > $OUT/checkpoint.pt\n" +
        std::string(kEpoch) + "\nsleep 60\necho '{\"outcome\":{}}' >&3\nexit 0");
  fake_->Assign(11, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));  // not the sleep
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->completed_.empty());
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_FALSE(fake_->failed_[0].retryable());
  EXPECT_EQ(fake_->failed_[0].message(),
            "the coordinator refuses the run's files: uploading checkpoint.pt: over the upload "
            "limit of 1 MiB (mal-coordinator --max-upload-mb)");
}

// A transient refusal (a full disk on the coordinator) is retried until it passes; the run then
// completes with every file delivered.
TEST_F(DaemonTest, AFullDiskOnTheCoordinatorIsWaitedOut) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->refuse_upload_["model.pt"] = {
        grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "the coordinator's disk is nearly full"),
        3};
  }
  Start(TrainsAnEpochAndSucceeds());
  fake_->Assign(11, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->failed_.empty());
  ASSERT_EQ(fake_->completed_.size(), 1u);
  EXPECT_THAT(fake_->uploads_, Contains("model.pt"));
  EXPECT_EQ(fake_->refuse_upload_["model.pt"].second, 0);
}

// A completed run's directory goes once the coordinator acknowledged it (its files are there); a
// failed one stays for inspection. A first attempt starts from an empty directory: one left by a
// run of another coordinator under the same experiment id is removed, not appended to.
TEST_F(DaemonTest, RunDirectoriesOfCompletedRunsGoAndFirstAttemptsStartEmpty) {
  const std::string failed_dir = dir_ / "work/runs/e-1/trial-0-fold-2";
  std::filesystem::create_directories(failed_dir + "/out");
  testing::WriteText(failed_dir + "/log.txt", "a line of another coordinator's run\n");
  testing::WriteText(failed_dir + "/out/model.pt", "stale");
  Start(std::string(kEpoch) + R"sh(
[ -f $OUT/../log.txt ] && grep -q "another coordinator" $OUT/../log.txt && echo STALE >&2
echo model > $OUT/model.pt
case "$OUT" in
  */trial-0-fold-2/out) echo '{"outcome":{"code":3,"message":"a failure that stays"}}' >&3; exit 1;;
esac
echo '{"outcome":{}}' >&3
exit 0)sh");
  fake_->Assign(11, 1);
  fake_->Assign(12, 2);
  {
    absl::MutexLock lock(&fake_->mu_);
    auto both = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
      return fake_->completed_.size() + fake_->failed_.size() == 2;
    };
    ASSERT_TRUE(fake_->mu_.AwaitWithTimeout(absl::Condition(&both), absl::Seconds(20)));
  }
  stop_ = true;
  thread_.join();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "work/runs/e-1/trial-0-fold-1"));
  ASSERT_TRUE(std::filesystem::exists(failed_dir + "/log.txt"));
  const std::string log = *ReadFile(failed_dir + "/log.txt");
  EXPECT_EQ(log.find("another coordinator"), std::string::npos) << log;
  EXPECT_EQ(log.find("STALE"), std::string::npos) << log;
  EXPECT_EQ(*ReadFile(failed_dir + "/out/model.pt"), "model\n");
}

// A coordinator that restarted after recording the completion (the reply lost) drops the run
// at the daemon's next heartbeat; the daemon asks once more, is told it is done, and removes the
// run's directory (it used to keep it for good, "not acknowledged").
TEST_F(DaemonTest, ACompletionWhoseReplyWasLostIsAskedAgainAfterTheDrop) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->lost_completion_replies_ = 2;  // Deliver's first try, and its retry after the drop
  }
  Start(TrainsAnEpochAndSucceeds());
  fake_->Assign(11, 1);
  {
    absl::MutexLock lock(&fake_->mu_);
    auto answered = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
      return fake_->completion_calls_ >= 3;
    };
    ASSERT_TRUE(fake_->mu_.AwaitWithTimeout(absl::Condition(&answered), absl::Seconds(20)));
  }
  ASSERT_TRUE(fake_->WaitForClaims(0));
  stop_ = true;
  thread_.join();
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_EQ(fake_->completion_calls_, 3);
  EXPECT_EQ(fake_->completed_.size(), 1u);
  EXPECT_TRUE(fake_->failed_.empty());
  EXPECT_FALSE(std::filesystem::exists(dir_ / "work/runs/e-1/trial-0-fold-1"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "work/runs/e-1"));
}

// A daemon killed while deleting a completed run's directory leaves DIR.removing; the next start
// removes it, and keeps a failed run's directory.
TEST_F(DaemonTest, AStartSweepsWhatAKilledDeletionLeft) {
  const std::string half = dir_ / "work/runs/e-3/trial-0-fold-1.removing";
  const std::string kept = dir_ / "work/runs/e-4/trial-0-fold-2";
  std::filesystem::create_directories(half + "/out");
  testing::WriteText(half + "/out/checkpoint.pt", "half deleted");
  std::filesystem::create_directories(kept);
  testing::WriteText(kept + "/log.txt", "a failed run's log\n");
  testing::WriteText(kept + "/.failed", "fold 2: out of memory");
  // The run a killed daemon was training: neither sent nor failed; it resumes from the
  // coordinator's checkpoint wherever it goes (it was kept for good until 2026-12-07).
  const std::string orphan = dir_ / "work/runs/e-4/trial-0-fold-3";
  std::filesystem::create_directories(orphan + "/out");
  testing::WriteText(orphan + "/out/checkpoint.pt", "the coordinator has one too");
  // Killed after its completion was sent, before the rename: every file is on the coordinator.
  const std::string sent = dir_ / "work/runs/e-5/trial-0-fold-1";
  std::filesystem::create_directories(sent + "/out");
  testing::WriteText(sent + "/out/model.pt", "weights the coordinator has");
  testing::WriteText(sent + "/.sent", "");
  Start("exit 0");
  {
    absl::MutexLock lock(&fake_->mu_);
    auto registered = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
      return fake_->registered_ > 0;
    };
    ASSERT_TRUE(fake_->mu_.AwaitWithTimeout(absl::Condition(&registered), absl::Seconds(20)));
  }
  stop_ = true;
  thread_.join();
  EXPECT_FALSE(std::filesystem::exists(half));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "work/runs/e-3"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "work/runs/e-5"));
  EXPECT_TRUE(std::filesystem::exists(kept + "/log.txt"));
  EXPECT_FALSE(std::filesystem::exists(orphan));
}

TEST_F(DaemonTest, TheEnginesOwnErrorFailsTheRunForGoodWithItsMessage) {
  Start(R"(echo '{"outcome":{"code":3,"message":"data.au.root: /nope: no such directory"}}' >&3
echo 'mal-worker: training failed: data.au.root: /nope: no such directory' >&2
exit 1)");
  fake_->Assign(12, 2);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_EQ(fake_->failed_[0].message(), "data.au.root: /nope: no such directory");
  EXPECT_FALSE(fake_->failed_[0].retryable());
  EXPECT_TRUE(fake_->completed_.empty());
  // Its directory is kept for inspection, marked so that the next start keeps it too.
  EXPECT_EQ(ReadFile(dir_ / "work/runs/e-1/trial-0-fold-2/.failed").value_or(""),
            "data.au.root: /nope: no such directory");
}

TEST_F(DaemonTest, AnEngineThatEndsWithoutAnOutcomeCrashedAndIsRetried) {
  Start(std::string(kEpoch) + "\necho 'segfault in somewhere' >&2\nkill -9 $$");
  fake_->Assign(13, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_TRUE(fake_->failed_[0].retryable());
  EXPECT_THAT(fake_->failed_[0].message(), HasSubstr("killed by signal 9"));
  EXPECT_THAT(fake_->failed_[0].message(),
              HasSubstr("segfault in somewhere"));  // the log's last line
}

TEST_F(DaemonTest, ExitZeroWithoutAnOutcomeIsNotASuccess) {
  Start(std::string(kEpoch) + "\nexit 0");
  fake_->Assign(14, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->completed_.empty());
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_TRUE(fake_->failed_[0].retryable());
  EXPECT_THAT(fake_->failed_[0].message(), HasSubstr("exited with status 0"));
}

TEST_F(DaemonTest, ARevokedRunIsStoppedAndReportsNothing) {
  Start("sleep 30 & wait");
  fake_->Assign(15, 1);
  ASSERT_TRUE(fake_->WaitForClaims(1));  // running
  const std::string run_dir = dir_ / "work/runs/e-1/trial-0-fold-1";
  EXPECT_TRUE(testing::WaitFor([&] { return std::filesystem::exists(run_dir + "/log.txt"); },
                               std::chrono::seconds(20)));
  fake_->Revoke(15);
  ASSERT_TRUE(fake_->WaitForClaims(0));  // stopped well before the 30 s sleep ends
  // It resumes from the coordinator's checkpoint wherever it runs next: its directory goes when
  // its task ends, not at the daemon's next start (which may be months away).
  EXPECT_TRUE(testing::WaitFor([&] { return !std::filesystem::exists(run_dir); },
                               std::chrono::seconds(20)));
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->completed_.empty());
  EXPECT_TRUE(fake_->failed_.empty());
}

// Failed runs' directories are kept for inspection, but only the newest --keep-failed-runs: a
// flaky host failing runs for weeks would otherwise fill its disk (a ResNet-34 run's 260 MB each).
TEST_F(DaemonTest, OnlyTheNewestFailedRunsDirectoriesAreKept) {
  keep_failed_runs_ = 2;
  auto failed_run = [&](const std::string& name, std::chrono::hours age) {
    const std::string run = dir_ / ("work/runs/e-0/" + name);
    std::filesystem::create_directories(run + "/out");
    testing::WriteText(run + "/out/checkpoint.pt", "weights");
    testing::WriteText(run + "/.failed", "engine process killed by signal 9");
    std::filesystem::last_write_time(run + "/.failed",
                                     std::filesystem::file_time_type::clock::now() - age);
    return run;
  };
  const std::string oldest = failed_run("trial-0-fold-1", std::chrono::hours(3));
  const std::string older = failed_run("trial-0-fold-2", std::chrono::hours(2));
  const std::string old = failed_run("trial-0-fold-3", std::chrono::hours(1));
  Start(R"(echo '{"outcome":{"code":3,"message":"non-finite loss"}}' >&3
exit 1)");
  {
    absl::MutexLock lock(&fake_->mu_);
    auto registered = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
      return fake_->registered_ > 0;
    };
    ASSERT_TRUE(fake_->mu_.AwaitWithTimeout(absl::Condition(&registered), absl::Seconds(20)));
  }
  // The start (before it registers) kept the newest two.
  EXPECT_FALSE(std::filesystem::exists(oldest));
  EXPECT_TRUE(std::filesystem::exists(older));
  fake_->Assign(12, 2);
  ASSERT_TRUE(fake_->WaitForOutcome());
  // The new failure is now the newest.
  EXPECT_FALSE(std::filesystem::exists(older));
  EXPECT_TRUE(std::filesystem::exists(old + "/out/checkpoint.pt"));
  EXPECT_EQ(ReadFile(dir_ / "work/runs/e-1/trial-0-fold-2/.failed").value_or(""),
            "non-finite loss");
}

// A failed run's directory is never removed while its task holds it (an engine that outlived its
// SIGKILL may still write there): with --keep-failed-runs 0 it goes at the next failure or start.
TEST_F(DaemonTest, AFailedRunsDirectoryStaysWhileItsRunIsHeld) {
  keep_failed_runs_ = 0;
  Start(R"(echo '{"outcome":{"code":3,"message":"non-finite loss"}}' >&3
exit 1)");
  fake_->Assign(12, 2);
  ASSERT_TRUE(fake_->WaitForOutcome());
  EXPECT_EQ(ReadFile(dir_ / "work/runs/e-1/trial-0-fold-2/.failed").value_or(""),
            "non-finite loss");
  stop_ = true;
  thread_.join();
  stop_ = false;
  Start("exit 0");  // the next start removes it
  EXPECT_TRUE(testing::WaitFor(
      [&] { return !std::filesystem::exists(dir_ / "work/runs/e-1/trial-0-fold-2"); },
      std::chrono::seconds(20)));
}

// The daemon told to stop after a run started but before its engine was spawned: the engine is
// signalled at once and may end before HandBack marks the run; it is still handed back, not
// failed (this raced, and showed as a flaky ShutdownHandsARunningRunBack under load).
TEST_F(DaemonTest, ShutdownWhileTheEngineStartsHandsTheRunBack) {
  StopDaemonWhenReported(kStartReport);
  Start("sleep 30 & wait");  // no trap: SIGTERM kills it at once
  fake_->Assign(17, 1);
  thread_.join();
  EXPECT_EQ(rc_, 0);
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_EQ(fake_->failed_[0].run_id(), 17);
  EXPECT_TRUE(fake_->failed_[0].released());
  EXPECT_TRUE(fake_->failed_[0].retryable());
  EXPECT_THAT(fake_->failed_[0].message(), HasSubstr("w1 shut down"));
}

// A run whose engine succeeds while the daemon stops (here: it ignores SIGTERM and finishes) is
// completed, not handed back to run again.
TEST_F(DaemonTest, ARunThatSucceedsWhileStoppingIsCompleted) {
  StopDaemonWhenReported(kEpochReport);
  // HandBack marks the run stopping and signals within about 100 ms of stop_; the engine ends
  // later.
  Start("trap '' TERM\n" + std::string(kEpoch) +
        "\nsleep 0.5\necho '{\"outcome\":{}}' >&3\nexit 0");
  fake_->Assign(18, 1);
  thread_.join();
  EXPECT_EQ(rc_, 0);
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->failed_.empty());
  ASSERT_EQ(fake_->completed_.size(), 1u);
  EXPECT_EQ(fake_->completed_[0].run_id(), 18);
}

// The engine's own verdict that a run cannot succeed anywhere (here: missing data) stands during a
// stop: the run fails for good with the engine's message instead of being handed back to retry.
TEST_F(DaemonTest, AnEngineErrorDuringTheStopStillFailsTheRunForGood) {
  StopDaemonWhenReported(kEpochReport);
  Start("trap '' TERM\n" + std::string(kEpoch) +
        "\nsleep 0.5\necho '{\"outcome\":{\"code\":3,\"message\":\"data.au.root: gone\"}}' >&3"
        "\nexit 1");
  fake_->Assign(19, 1);
  thread_.join();
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_EQ(fake_->failed_[0].message(), "data.au.root: gone");
  EXPECT_FALSE(fake_->failed_[0].retryable());
  EXPECT_FALSE(fake_->failed_[0].released());
}

// An engine that stops making progress (here: one training point, then nothing, like a process
// spinning in a library) is stopped after --stall-timeout-s, long before it would end, and its
// run fails as retryable with a message naming the stall, where it stopped and the log's last line.
TEST_F(DaemonTest, AStuckEngineIsStoppedAndItsRunRetried) {
  stall_timeout_s_ = 1;
  Start(R"(echo '{"point":{"epoch":1,"iteration":5}}' >&3
echo 'evaluating the test subjects' >&2
sleep 60 & wait)");
  fake_->Assign(20, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());  // within 20 s: the engine would sleep for 60
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->completed_.empty());
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_TRUE(fake_->failed_[0].retryable());
  EXPECT_FALSE(fake_->failed_[0].released());
  EXPECT_THAT(fake_->failed_[0].message(),
              HasSubstr("engine made no progress for 1 s (--stall-timeout-s) after iteration 5"));
  EXPECT_THAT(fake_->failed_[0].message(), HasSubstr("evaluating the test subjects"));
  EXPECT_THAT(fake_->uploads_, Contains("log.txt"));
}

// An engine that answers the watchdog's SIGTERM with an event was slow, not stuck: the message
// says so and how to avoid it.
TEST_F(DaemonTest, AStalledEngineThatMovesAfterTheSigtermIsCalledSlow) {
  stall_timeout_s_ = 1;
  stop_grace_s_ = 10;  // its trap must run before the SIGKILL, on a loaded machine too
  Start(R"(trap 'echo "{\"point\":{\"epoch\":1,\"iteration\":6}}" >&3; exit 143' TERM
echo '{"point":{"epoch":1,"iteration":5}}' >&3
sleep 60 & wait)");
  fake_->Assign(27, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_TRUE(fake_->failed_[0].retryable());
  EXPECT_THAT(fake_->failed_[0].message(), HasSubstr("after iteration 5"));
  EXPECT_THAT(fake_->failed_[0].message(),
              HasSubstr("it moved after the SIGTERM (slow, not stuck: raise --stall-timeout-s)"));
}

// The engine's progress events (sent while batches move between records, as in a long
// evaluation) keep a run that sends no record for longer than the timeout alive, and stay with
// the daemon.
TEST_F(DaemonTest, ProgressEventsKeepASlowRunAliveAndAreNotReported) {
  stall_timeout_s_ = 2;
  // 3 s without a record, a progress event every 0.2 s, then success.
  Start(std::string(kEpoch) + R"(
i=0; while [ $i -lt 15 ]; do echo '{"progress":{"units":'$i'}}' >&3; sleep 0.2; i=$((i+1)); done
echo '{"outcome":{}}' >&3
exit 0)");
  fake_->Assign(21, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->failed_.empty()) << fake_->failed_[0].message();
  ASSERT_EQ(fake_->completed_.size(), 1u);
  for (const v1::Event& e : fake_->events_) EXPECT_FALSE(e.has_progress());
}

// A coordinator that is away at an epoch end does not stop the training: the daemon gives the
// epoch's uploads up after a while (they go again later) and keeps draining the engine's pipe,
// so an engine that writes far more than a pipe holds gets through; its events are
// reported once the coordinator is back. (Uploads used to retry for as long as it was away, and
// the engine blocked on its full pipe.)
TEST_F(DaemonTest, ACoordinatorAwayAtAnEpochEndDoesNotStopTheTraining) {
  GoAwayAfterTheEpochReport();
  // 10,000 points of about 41 bytes: 410 KB, far more than the pipe and the daemon's read buffer
  // (64 KiB each) hold.
  Start(std::string(kEpoch) + R"(
i=1; while [ $i -le 10000 ]; do echo '{"point":{"epoch":2,"iteration":'$i'}}'; i=$((i+1)); done >&3
touch "$OUT/../relayed"
echo '{"outcome":{}}' >&3
exit 0)");
  fake_->Assign(23, 1);
  const std::string relayed = dir_ / "work/runs/e-1/trial-0-fold-1/relayed";
  bool through = false;
  for (int i = 0; i < 400 && !through; ++i) {  // up to 40 s; the uploads give up after 10
    std::this_thread::sleep_for(milliseconds(100));
    through = std::filesystem::exists(relayed);
  }
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->away_ = false;
  }
  ASSERT_TRUE(through) << "the engine stayed blocked on its pipe while the coordinator was away";
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->completed_.size(), 1u);
  int points = 0;
  for (const auto& e : fake_->events_) points += e.has_point();
  EXPECT_EQ(points, 10000);
}

// What an epoch end could not upload while the coordinator was away (the epoch's weights CSV,
// the logs) goes at the next periodic tick once it is back, so a run that then ends without
// success (here: a crash) has not lost it.
TEST_F(DaemonTest, WhatAnEpochEndCouldNotSendIsSentWhenTheCoordinatorIsBack) {
  GoAwayAfterTheEpochReport();
  Start(R"(mkdir -p "$OUT/weights"; echo 'id,weight' > "$OUT/weights/epoch_002.csv"
echo "{}" > "$OUT/metrics.json"
)" + std::string(kEpoch) +
        R"(
while [ ! -e "$OUT/../go" ]; do echo '{"progress":{"units":1}}' >&3; sleep 0.2; done
kill -9 $$)");
  fake_->Assign(26, 1);
  // The epoch end's uploads give up 10 s after their first refused try.
  {
    absl::MutexLock lock(&fake_->mu_);
    auto refused = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
      return fake_->first_refused_ != absl::InfiniteFuture();
    };
    ASSERT_TRUE(fake_->mu_.AwaitWithTimeout(absl::Condition(&refused), absl::Seconds(20)));
    static const bool kNever = false;  // wait out the deadline, the lock released meanwhile
    fake_->mu_.AwaitWithDeadline(absl::Condition(&kNever),
                                 fake_->first_refused_ + absl::Seconds(12));
    ASSERT_FALSE(fake_->events_.empty());  // the epoch was reported before it went away
    EXPECT_THAT(fake_->uploads_, ::testing::Not(Contains("weights/epoch_002.csv")));
    fake_->away_ = false;
    auto sent = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
      return std::find(fake_->uploads_.begin(), fake_->uploads_.end(), "weights/epoch_002.csv") !=
             fake_->uploads_.end();
    };
    EXPECT_TRUE(fake_->mu_.AwaitWithTimeout(absl::Condition(&sent), absl::Seconds(20)));
    EXPECT_THAT(fake_->uploads_, Contains("metrics.json"));
    EXPECT_TRUE(fake_->failed_.empty());
  }
  std::ofstream(dir_ / "work/runs/e-1/trial-0-fold-1/go").put('\n');
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_TRUE(fake_->failed_[0].retryable());
}

// A checkpoint the engine writes while the daemon uploads the one it set aside is not marked as
// sent: it goes up at the next periodic tick (it went up only with the checkpoint after it, or at
// the run's end, so a daemon killed meanwhile left the coordinator one checkpoint further behind).
TEST_F(DaemonTest, ACheckpointWrittenDuringAnUploadGoesUpAtTheNextTick) {
  const std::string out = dir_ / "work/runs/e-1/trial-0-fold-1/out";
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->on_upload_ = [this, out](const std::string& name) {
      if (name != "records.csv" || replaced_) return;
      replaced_ = true;  // the engine's next checkpoint, as it writes one: a rename
      testing::WriteText(out + "/c.tmp", "checkpoint 2");
      std::filesystem::rename(out + "/c.tmp", out + "/checkpoint.pt");
    };
  }
  Start(R"(printf 'epoch,iteration\n1,1\n' > $OUT/records.csv
echo 'checkpoint 1' > $OUT/c.tmp && mv $OUT/c.tmp $OUT/checkpoint.pt
while [ ! -e "$OUT/../go" ]; do echo '{"progress":{"units":1}}' >&3; sleep 0.2; done
kill -9 $$)");
  fake_->Assign(11, 1);
  {
    absl::MutexLock lock(&fake_->mu_);
    auto second = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fake_->mu_) {
      for (const auto& [name, bytes] : fake_->uploaded_) {
        if (name == "checkpoint.pt" && bytes == "checkpoint 2") return true;
      }
      return false;
    };
    EXPECT_TRUE(fake_->mu_.AwaitWithTimeout(absl::Condition(&second), absl::Seconds(20)));
    EXPECT_TRUE(fake_->failed_.empty()) << "it went up only at the run's end";
    ASSERT_FALSE(fake_->uploaded_.empty());
  }
  std::ofstream(out + "/../go").put('\n');
  ASSERT_TRUE(fake_->WaitForOutcome());
}

// An upload refused because the coordinator no longer leases the run to this worker stops the run
// as a refused report does (it read "checkpoint.pt held back ... sent again later" and trained on).
TEST_F(DaemonTest, AnUploadRefusedAsNotLeasedStopsTheRun) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->refuse_upload_["records.csv"] = {
        grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "fold run 11 is not leased to w1"), -1};
  }
  Start(R"(printf 'epoch,iteration\n1,1\n' > $OUT/records.csv
echo 'checkpoint 1' > $OUT/c.tmp && mv $OUT/c.tmp $OUT/checkpoint.pt
while true; do echo '{"progress":{"units":1}}' >&3; sleep 0.2; done)");
  fake_->Assign(11, 1);
  ASSERT_TRUE(fake_->WaitForClaims(1));
  ASSERT_TRUE(fake_->WaitForClaims(0));  // stopped at the first upload tick, not after 20 s
  EXPECT_TRUE(testing::WaitFor(
      [&] { return !std::filesystem::exists(dir_ / "work/runs/e-1/trial-0-fold-1"); },
      std::chrono::seconds(20)));
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->completed_.empty());
  EXPECT_TRUE(fake_->failed_.empty());
  EXPECT_THAT(fake_->uploads_, ::testing::Not(Contains("checkpoint.pt")));
}

// The coordinator's checkpoint is never ahead of its logs and weights CSVs: each checkpoint goes
// up after the records that reach its iteration and every weights CSV written before it, in the
// periodic uploads while the engine trains (with no epoch event read yet) and at the end. A run
// resumed from a checkpoint that went up alone (a daemon killed before the epoch end's upload)
// lost the iterations between, for good (found by a kill-at-random probe).
TEST_F(DaemonTest, ACheckpointGoesUpOnlyAfterTheLogsAndWeightsItCovers) {
  const auto uploads = UploadsOfASucceededRun(R"(printf 'epoch,iteration\n1,1\n' > $OUT/records.csv
echo 'checkpoint 1' > $OUT/c.tmp && mv $OUT/c.tmp $OUT/checkpoint.pt
sleep 2
echo '1,2' >> $OUT/records.csv
mkdir -p $OUT/weights && echo 'id,weight' > $OUT/weights/epoch_001.csv
echo 'checkpoint 2' > $OUT/c.tmp && mv $OUT/c.tmp $OUT/checkpoint.pt
sleep 2
echo '2,3' >> $OUT/records.csv
echo 'checkpoint 3' > $OUT/c.tmp && mv $OUT/c.tmp $OUT/checkpoint.pt
)");
  ASSERT_FALSE(uploads.empty()) << "the run did not complete";
  // The records' last iteration and whether epoch 1's weights went up, as the coordinator held
  // them at each checkpoint's arrival.
  int64_t records_iteration = 0;
  bool weights = false;
  std::set<std::string> checkpoints;
  for (const auto& [name, bytes] : uploads) {
    if (name == "records.csv") {
      const std::vector<std::string> lines = absl::StrSplit(bytes, '\n', absl::SkipEmpty());
      const std::vector<std::string> last = absl::StrSplit(lines.back(), ',');
      records_iteration = 0;
      (void)absl::SimpleAtoi(last.back(), &records_iteration);
    }
    weights = weights || name == "weights/epoch_001.csv";
    if (name != "checkpoint.pt") continue;
    checkpoints.insert(bytes);
    int64_t iteration = 0;
    ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(bytes.substr(11)), &iteration))
        << bytes;
    EXPECT_GE(records_iteration, iteration)
        << "checkpoint " << iteration << " went up before its records";
    if (iteration >= 2) {
      EXPECT_TRUE(weights) << "checkpoint " << iteration << " before epoch 1's weights";
    }
  }
  EXPECT_THAT(checkpoints, Contains("checkpoint 3\n"));  // the last one, at the end
  EXPECT_GE(checkpoints.size(), 2u);  // and at least one while the engine trained
  // Nothing set aside is left behind.
  std::error_code ec;
  for (std::filesystem::recursive_directory_iterator it(dir_ / "work", ec), end; !ec && it != end;
       it.increment(ec)) {
    EXPECT_NE(it->path().filename(), internal::kCheckpointSnapshot) << it->path();
  }
}

// After an out-of-memory restart (train.oom_retries) the coordinator holds the larger batches'
// checkpoint: the new run's logs must never sit beside it (a retry would resume the old run with
// them). At every upload, while the old checkpoint is the coordinator's, its records are the old
// run's or empty; the new run's go up only after its first checkpoint.
TEST_F(DaemonTest, AfterARestartTheNewLogsGoUpOnlyAfterTheNewCheckpoint) {
  const auto uploads =
      UploadsOfASucceededRun(R"(printf 'epoch,iteration\n1,1\n1,2\n' > $OUT/records.csv
echo 'checkpoint old' > $OUT/c.tmp && mv $OUT/c.tmp $OUT/checkpoint.pt
sleep 2
rm -f $OUT/checkpoint.pt $OUT/records.csv
echo '{"restart":{"batchAu":8,"batchFe":8,"valBatch":16,"halving":1,"reason":"out of memory"}}' >&3
printf 'epoch,iteration\n' > $OUT/records.csv
echo 'checkpoint new' > $OUT/c.tmp && mv $OUT/c.tmp $OUT/checkpoint.pt
echo '1,1' >> $OUT/records.csv
sleep 2
echo '1,2' >> $OUT/records.csv
)");
  ASSERT_FALSE(uploads.empty()) << "the run did not complete";
  const std::string old_records = "epoch,iteration\n1,1\n1,2\n";
  std::string checkpoint, records;
  bool old_sent = false, new_sent = false;
  for (const auto& [name, bytes] : uploads) {
    if (name == "checkpoint.pt") checkpoint = bytes;
    if (name == "records.csv") records = bytes;
    old_sent = old_sent || checkpoint == "checkpoint old\n";
    new_sent = new_sent || checkpoint == "checkpoint new\n";
    if (checkpoint == "checkpoint old\n") {
      EXPECT_TRUE(records == old_records || records.empty())
          << "the old checkpoint beside the new run's records:\n"
          << records;
    }
  }
  EXPECT_TRUE(old_sent);  // the periodic upload before the restart
  EXPECT_TRUE(new_sent);
  EXPECT_EQ(records, "epoch,iteration\n1,1\n1,2\n");  // the new run's, in the end
}

// A weights CSV whose epoch line never reached the daemon (it died in the engine's memory with a
// crash) is still uploaded by the ending, before the next attempt starts from an empty out/.
TEST_F(DaemonTest, ACrashStillUploadsEveryWeightsCsvTheEngineWrote) {
  Start(R"(mkdir -p "$OUT/weights"; echo 'id,weight' > "$OUT/weights/epoch_003.csv"
)" + std::string(kEpoch) +
        "\nkill -9 $$");
  fake_->Assign(28, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_THAT(fake_->uploads_, Contains("weights/epoch_003.csv"));
}

// An exception in one run's handling (here thrown by the coordinator client during the epoch's
// upload) fails that run as retryable and kills its engine; the daemon and later runs go on.
TEST_F(DaemonTest, AnExceptionInARunsHandlingFailsOnlyThatRun) {
  {
    absl::MutexLock lock(&fake_->mu_);
    fake_->throw_on_upload_ = true;
  }
  // The first time an epoch, then a long sleep; the second time an epoch and success.
  Start(R"(first=1; [ -e "$OUT/../../first" ] && first=0; touch "$OUT/../../first"
)" + std::string(kEpoch) +
        R"(
[ $first = 1 ] && sleep 60
echo '{"outcome":{}}' >&3
exit 0)");
  fake_->Assign(24, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());  // within 20 s: its engine would sleep for 60
  fake_->Assign(25, 2);
  ASSERT_TRUE(fake_->WaitForClaims(0));
  for (int i = 0; i < 200; ++i) {
    {
      absl::MutexLock lock(&fake_->mu_);
      if (!fake_->completed_.empty()) break;
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_EQ(fake_->failed_[0].run_id(), 24);
  EXPECT_TRUE(fake_->failed_[0].retryable());
  EXPECT_THAT(fake_->failed_[0].message(),
              HasSubstr("worker w1: an unforeseen error while uploading"));
  ASSERT_EQ(fake_->completed_.size(), 1u);
  EXPECT_EQ(fake_->completed_[0].run_id(), 25);
}

// 0 turns the watchdog off: a quiet engine is left alone.
TEST_F(DaemonTest, StallTimeoutZeroNeverStopsARun) {
  stall_timeout_s_ = 0;
  Start(std::string(kEpoch) + "\nsleep 2\necho '{\"outcome\":{}}' >&3\nexit 0");
  fake_->Assign(22, 1);
  ASSERT_TRUE(fake_->WaitForOutcome());
  absl::MutexLock lock(&fake_->mu_);
  EXPECT_TRUE(fake_->failed_.empty());
  EXPECT_EQ(fake_->completed_.size(), 1u);
}

TEST_F(DaemonTest, ShutdownHandsARunningRunBack) {
  Start("trap 'exit 143' TERM\nsleep 30 & wait");
  fake_->Assign(16, 1);
  ASSERT_TRUE(fake_->WaitForClaims(1));
  stop_ = true;
  thread_.join();
  EXPECT_EQ(rc_, 0);
  absl::MutexLock lock(&fake_->mu_);
  ASSERT_EQ(fake_->failed_.size(), 1u);
  EXPECT_TRUE(fake_->failed_[0].released());
  EXPECT_THAT(fake_->failed_[0].message(), HasSubstr("w1 shut down"));
}

// The backlog purge keeps the head a timed-out request may have delivered (its events keep their
// run-local indices) and drops weight summaries only after it, in order.
TEST(DropWeightSummariesTest, KeepsTheHeadAndTheOrderOfWhatStays) {
  std::deque<v1::Event> pending;
  for (int i = 0; i < 8; ++i) {
    v1::Event e;
    if (i % 2 == 0) {
      e.mutable_point()->set_iteration(i);
    } else {
      e.mutable_weights()->set_iteration(i);
    }
    pending.push_back(e);
  }
  EXPECT_EQ(internal::DropWeightSummaries(pending, 4), 2u);  // events 5 and 7, not 1 and 3
  std::vector<int64_t> left;
  for (const auto& e : pending) {
    left.push_back(e.has_point() ? e.point().iteration() : e.weights().iteration());
  }
  EXPECT_THAT(left, ::testing::ElementsAre(0, 1, 2, 3, 4, 6));
  EXPECT_EQ(internal::DropWeightSummaries(pending, 100), 0u);  // a head longer than the queue
  EXPECT_EQ(pending.size(), 6u);
}

}  // namespace
}  // namespace mal::worker
