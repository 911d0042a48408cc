#include "server/events/watch_session.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace mal::server {
namespace {

using ::testing::HasSubstr;

class WatchSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = *StateStore::Open(dir_ / "state.db");
    experiment_ = *store_->CreateExperiment("", "x", "s", 1, 1);
    hub_ = std::make_unique<EventHub>(store_.get(), 100);
  }
  int64_t Publish(const std::string& kind, v1::Event ev) {
    return *hub_->Publish(experiment_, kind, ev.SerializeAsString(), false);
  }
  std::unique_ptr<WatchSession> Start(int64_t from_seq, std::vector<std::string> kinds = {}) {
    v1::WatchRequest request;
    request.set_experiment_id(experiment_);
    request.set_from_seq(from_seq);
    for (const auto& k : kinds) request.add_kinds(k);
    return *WatchSession::Start(
        hub_.get(), [this]() -> absl::StatusOr<v1::ExperimentState> { return state_; }, request);
  }
  // Steps until done (at most `steps`); returns the seqs of the events sent, -1 for progress.
  static std::vector<int64_t> Drain(WatchSession& s, int steps, bool* done) {
    std::vector<int64_t> out;
    *done = false;
    for (int i = 0; i < steps && !*done; ++i) {
      auto step = s.Next(false);
      EXPECT_TRUE(step.ok()) << step.status();
      if (!step.ok()) break;
      for (const auto& r : step->send) out.push_back(r.has_event() ? r.event().seq() : -1);
      *done = step->done;
    }
    return out;
  }
  testing::TempDir dir_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<EventHub> hub_;
  std::string experiment_;
  v1::ExperimentState state_ = v1::EXPERIMENT_RUNNING;
};

TEST_F(WatchSessionTest, SendsTheFilteredEventsInOrderAndEndsAfterTheEndEvent) {
  v1::Event point, end;
  point.mutable_point()->set_iteration(1);
  end.mutable_end()->set_state(v1::EXPERIMENT_SUCCEEDED);
  Publish("point", point);        // 1
  Publish("state", v1::Event());  // 2: filtered out, still advances the position
  Publish("point", point);        // 3
  Publish("end", end);            // 4
  auto s = Start(1, {"point", "end"});
  bool done = false;
  const std::vector<int64_t> seqs = Drain(*s, 10, &done);
  EXPECT_TRUE(done);
  EXPECT_THAT(seqs, ::testing::ElementsAre(1, 3, 4));
  EXPECT_EQ(s->last_seq(), 4);
}

TEST_F(WatchSessionTest, IdleStreamsGetProgressAndAFinishedLogEndsAtOnce) {
  v1::Event point;
  point.mutable_point()->set_iteration(1);
  Publish("point", point);
  auto s = Start(2);  // past the only event: nothing yet
  auto step = s->Next(false);
  ASSERT_TRUE(step.ok());
  ASSERT_EQ(step->send.size(), 1u);
  EXPECT_TRUE(step->send[0].has_progress());
  EXPECT_EQ(step->send[0].progress().latest_seq(), 1);
  EXPECT_FALSE(step->done);  // still RUNNING

  state_ = v1::EXPERIMENT_FAILED;  // terminal, and nothing after seq 1: the log is complete
  auto late = Start(2);
  step = late->Next(false);
  ASSERT_TRUE(step.ok());
  EXPECT_TRUE(step->done);
  EXPECT_EQ(step->send[0].progress().state(), v1::EXPERIMENT_FAILED);
}

TEST_F(WatchSessionTest, ShutdownNamesTheSeqToResumeFromAndUnknownExperimentsAreNotFound) {
  v1::Event point;
  point.mutable_point()->set_iteration(1);
  Publish("point", point);
  auto s = Start(1);
  bool done = false;
  Drain(*s, 1, &done);
  auto step = s->Next(/*shutting_down=*/true);
  EXPECT_EQ(step.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(step.status().message()), HasSubstr("resume from seq 2"));

  v1::WatchRequest request;
  request.set_experiment_id("nope");
  auto missing = WatchSession::Start(
      hub_.get(),
      []() -> absl::StatusOr<v1::ExperimentState> {
        return absl::NotFoundError("experiment nope");
      },
      request);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace mal::server
