// The engine child's side of the event pipe: records and progress events as JSON lines, the
// outcome last.

#include "worker/daemon/event_pipe.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "common/util/progress.h"

namespace mal::worker {
namespace {

using std::chrono::milliseconds;

class EventPipeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::pipe(fds_), 0);
    ASSERT_EQ(::fcntl(fds_[0], F_SETFL, O_NONBLOCK), 0);
  }
  void TearDown() override {
    ::close(fds_[0]);
    if (fds_[1] >= 0) ::close(fds_[1]);
  }
  // The complete lines written so far, decoded.
  std::vector<v1::Event> Drain() {
    char buf[4096];
    for (ssize_t n; (n = ::read(fds_[0], buf, sizeof buf)) > 0;) text_.append(buf, n);
    std::vector<v1::Event> events;
    size_t nl;
    while ((nl = text_.find('\n')) != std::string::npos) {
      auto e = DecodeEventLine(text_.substr(0, nl));
      text_.erase(0, nl + 1);
      EXPECT_TRUE(e.ok()) << e.status();
      if (e.ok()) events.push_back(*e);
    }
    return events;
  }

  int fds_[2] = {-1, -1};
  std::string text_;
};

TEST_F(EventPipeTest, ARecordIsOneDecodableLine) {
  PipeSink sink(fds_[1]);
  engine::IterationRecord r;
  r.epoch = 2;
  r.iteration = 17;
  r.loss_au = 0.25;
  sink.OnIteration(r);
  auto events = Drain();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].point().iteration(), 17);
  EXPECT_EQ(events[0].point().epoch(), 2);
  EXPECT_DOUBLE_EQ(events[0].point().loss_au(), 0.25);
}

// A successful outcome carries the run's final metrics (its result); a failed one none.
TEST_F(EventPipeTest, ASuccessfulOutcomeCarriesTheFinalEpoch) {
  engine::EpochRecord e;
  e.epoch = 4;
  e.iteration = 80;
  e.aus = {1, 2};
  e.test_f1 = {0.5, 0.75};
  e.test_mean_f1 = 0.625;
  {
    PipeSink sink(fds_[1]);
    sink.Finish(absl::OkStatus(), &e);
  }
  {
    PipeSink sink(fds_[1]);
    sink.Finish(absl::InternalError("non-finite loss"), &e);
  }
  auto events = Drain();
  ASSERT_EQ(events.size(), 2u);
  ASSERT_TRUE(events[0].outcome().has_final_epoch());
  EXPECT_EQ(events[0].outcome().final_epoch().epoch(), 4);
  EXPECT_EQ(events[0].outcome().final_epoch().iteration(), 80);
  EXPECT_DOUBLE_EQ(events[0].outcome().final_epoch().test_mean_f1(), 0.625);
  EXPECT_THAT(events[0].outcome().final_epoch().test_f1(), ::testing::ElementsAre(0.5, 0.75));
  EXPECT_FALSE(events[1].outcome().has_final_epoch());
  EXPECT_EQ(events[1].outcome().message(), "non-finite loss");
}

// train.oom_retries starting a run over: one line the daemon forwards, with the new batches.
TEST_F(EventPipeTest, ARestartCarriesTheNewBatches) {
  PipeSink sink(fds_[1]);
  sink.OnRestart(engine::RestartRecord{"out of memory on cuda:0 with batch 64 AU", 32, 24, 128, 1});
  auto events = Drain();
  ASSERT_EQ(events.size(), 1u);
  ASSERT_TRUE(events[0].has_restart());
  EXPECT_EQ(events[0].restart().batch_au(), 32);
  EXPECT_EQ(events[0].restart().batch_fe(), 24);
  EXPECT_EQ(events[0].restart().val_batch(), 128);
  EXPECT_EQ(events[0].restart().halving(), 1);
  EXPECT_EQ(events[0].restart().reason(), "out of memory on cuda:0 with batch 64 AU");
}

// Progress events report the process's work count while it moves, say nothing while it stands
// still, and stop before the outcome, which stays the last line.
TEST_F(EventPipeTest, ProgressIsReportedWhileTheCountMovesAndTheOutcomeStaysLast) {
  PipeSink sink(fds_[1]);
  sink.StartProgressReports(milliseconds(10));
  for (int i = 0; i < 3; ++i) NoteProgress();
  const int64_t target = ProgressCount();
  std::vector<v1::Event> seen;
  for (int waited = 0; waited < 10000; waited += 10) {
    for (auto& e : Drain()) seen.push_back(e);
    if (!seen.empty() && seen.back().progress().units() == target) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_FALSE(seen.empty());
  for (const auto& e : seen) ASSERT_TRUE(e.has_progress());
  EXPECT_EQ(seen.back().progress().units(), target);
  for (size_t i = 1; i < seen.size(); ++i)
    EXPECT_GT(seen[i].progress().units(), seen[i - 1].progress().units());

  // Standing still: nothing more, though the reporter woke about 20 times.
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_TRUE(Drain().empty());

  sink.Finish(absl::CancelledError("stopped at iteration 3"));
  NoteProgress();  // after Finish: no reporter left to send it
  std::this_thread::sleep_for(milliseconds(50));
  auto tail = Drain();
  ASSERT_EQ(tail.size(), 1u);
  ASSERT_TRUE(tail[0].has_outcome());
  EXPECT_EQ(tail[0].outcome().code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_TRUE(tail[0].outcome().retryable());
}

// A daemon that does not read for a while (busy with a coordinator that does not answer) never
// blocks the training thread: 20,000 records (about 1.5 MB, far more than a pipe holds) are
// written at once, wait in memory, and all reach the reader in order once it reads again, the
// outcome last.
TEST_F(EventPipeTest, ADaemonThatDoesNotReadNeverBlocksTraining) {
  PipeSink sink(fds_[1]);
  auto writes = std::async(std::launch::async, [&sink]() {
    engine::IterationRecord r;
    for (int i = 1; i <= 20000; ++i) {
      r.iteration = i;
      sink.OnIteration(r);
    }
    engine::EpochRecord e;
    e.epoch = 1;
    e.iteration = 20000;
    sink.OnEpoch(e);
  });
  const bool returned = writes.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  auto finish = std::async(std::launch::async, [&sink]() { sink.Finish(absl::OkStatus()); });
  std::vector<v1::Event> events;
  while (finish.wait_for(milliseconds(1)) != std::future_status::ready) {
    for (auto& e : Drain()) events.push_back(e);
  }
  for (auto& e : Drain()) events.push_back(e);
  ASSERT_TRUE(returned) << "the writes blocked on the full pipe";
  ASSERT_EQ(events.size(), 20002u);
  for (int i = 0; i < 20000; ++i) ASSERT_EQ(events[i].point().iteration(), i + 1);
  EXPECT_TRUE(events[20000].has_epoch());
  EXPECT_TRUE(events[20001].has_outcome());
}

// Past the backlog limit loss points are dropped, never the epoch or the outcome.
TEST_F(EventPipeTest, AFullBacklogDropsPointsButNeverEpochsOrTheOutcome) {
  PipeSink sink(fds_[1], /*max_backlog=*/4096);
  engine::IterationRecord r;
  for (int i = 1; i <= 5000; ++i) {  // about 400 KB: the pipe (64 KiB) and 4 KiB of backlog fill
    r.iteration = i;
    sink.OnIteration(r);
  }
  engine::EpochRecord e;
  e.epoch = 3;
  sink.OnEpoch(e);
  auto finish = std::async(std::launch::async, [&sink]() { sink.Finish(absl::OkStatus()); });
  std::vector<v1::Event> events;
  while (finish.wait_for(milliseconds(1)) != std::future_status::ready) {
    for (auto& ev : Drain()) events.push_back(ev);
  }
  for (auto& ev : Drain()) events.push_back(ev);
  ASSERT_GE(events.size(), 2u);
  EXPECT_LT(events.size(), 5002u);  // some points were dropped
  EXPECT_EQ(events[events.size() - 2].epoch().epoch(), 3);
  EXPECT_TRUE(events.back().has_outcome());
}

// A reader that went away stops the writes without an error (the run's files have everything).
TEST_F(EventPipeTest, AClosedReaderIsIgnored) {
  PipeSink sink(fds_[1]);
  ::close(fds_[0]);
  fds_[0] = ::open("/dev/null", O_RDONLY);  // for TearDown
  std::signal(SIGPIPE, SIG_IGN);
  engine::IterationRecord r;
  sink.OnIteration(r);
  sink.OnIteration(r);
  sink.Finish(absl::OkStatus());
}

}  // namespace
}  // namespace mal::worker
