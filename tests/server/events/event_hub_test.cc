#include "server/events/event_hub.h"

#include <atomic>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace mal::server {
namespace {

using ::testing::HasSubstr;

class EventHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = *StateStore::Open(dir_ / "state.db");
    experiment_ = *store_->CreateExperiment("", "x", "s", 1, 1);
  }
  // Reads until `n` events or an error; returns the seqs seen.
  static std::vector<int64_t> Drain(Subscription& s, size_t n, absl::Status* end = nullptr) {
    std::vector<int64_t> seqs;
    while (seqs.size() < n) {
      auto e = s.Next(absl::Seconds(5));
      if (!e.ok()) {
        if (end) *end = e.status();
        break;
      }
      if (!e->has_value()) break;  // timed out
      seqs.push_back((*e)->seq);
    }
    return seqs;
  }
  testing::TempDir dir_;
  std::unique_ptr<StateStore> store_;
  std::string experiment_;
};

TEST_F(EventHubTest, ReplayThenLiveWithoutGapOrDuplicate) {
  EventHub hub(store_.get(), 1000);
  for (int i = 0; i < 300; ++i) ASSERT_TRUE(hub.Publish(experiment_, "point", "p", false).ok());
  std::atomic<bool> started{false};
  std::thread publisher([&] {
    started = true;
    for (int i = 0; i < 300; ++i) ASSERT_TRUE(hub.Publish(experiment_, "point", "p", false).ok());
  });
  while (!started) std::this_thread::yield();
  auto sub = hub.Subscribe(experiment_, 1);  // subscribes while events keep coming
  ASSERT_TRUE(sub.ok());
  const std::vector<int64_t> seqs = Drain(**sub, 600);
  publisher.join();
  ASSERT_EQ(seqs.size(), 600u);
  for (size_t i = 0; i < seqs.size(); ++i) ASSERT_EQ(seqs[i], static_cast<int64_t>(i + 1));
}

TEST_F(EventHubTest, StartsFromAnySeqAndTimesOutQuietly) {
  EventHub hub(store_.get(), 10);
  for (int i = 0; i < 5; ++i) hub.Publish(experiment_, "point", "p", false).IgnoreError();
  auto sub = hub.Subscribe(experiment_, 4);
  ASSERT_TRUE(sub.ok());
  EXPECT_THAT(Drain(**sub, 2), ::testing::ElementsAre(4, 5));
  auto none = (*sub)->Next(absl::Milliseconds(20));
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto future = hub.Subscribe(experiment_, 8);  // from a seq not written yet
  for (int i = 0; i < 4; ++i) hub.Publish(experiment_, "point", "p", false).IgnoreError();
  EXPECT_THAT(Drain(**future, 2), ::testing::ElementsAre(8, 9));
  EXPECT_EQ(*hub.LastSeq(experiment_), 9);
}

TEST_F(EventHubTest, SlowWatcherGetsLatestSummariesAndNeverSlowsThePublisher) {
  EventHub hub(store_.get(), 4);
  auto stalled = hub.Subscribe(experiment_, 1);
  ASSERT_TRUE(stalled.ok());
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(hub.Publish(experiment_, "weights", std::to_string(i), true).ok());
  }
  std::vector<std::string> payloads;
  while (true) {
    auto e = (*stalled)->Next(absl::Milliseconds(10));
    ASSERT_TRUE(e.ok()) << e.status();
    if (!e->has_value()) break;
    payloads.push_back((*e)->payload);
  }
  ASSERT_FALSE(payloads.empty());
  EXPECT_LE(payloads.size(), 4u);
  EXPECT_EQ(payloads.back(), "99");  // the latest summary survived
  EXPECT_GT(hub.stats().coalesced, 90);
}

TEST_F(EventHubTest, WatcherThatFallsBehindOnLossPointsIsEndedWithItsResumeSeq) {
  EventHub hub(store_.get(), 8);
  auto slow = hub.Subscribe(experiment_, 1);
  auto fast = hub.Subscribe(experiment_, 1);
  ASSERT_TRUE(slow.ok() && fast.ok());
  std::vector<int64_t> fast_seqs;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(hub.Publish(experiment_, "point", "p", false).ok());
    for (int64_t s : Drain(**fast, 1)) fast_seqs.push_back(s);
  }
  EXPECT_EQ(fast_seqs.size(), 20u);  // the slow watcher did not hold back the fast one
  absl::Status end;
  const std::vector<int64_t> got = Drain(**slow, 100, &end);
  EXPECT_EQ(got.size(), 8u);
  EXPECT_EQ(end.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(end.message()), HasSubstr("resume from seq 9"));
  EXPECT_EQ(hub.stats().ended_slow, 1);
  // Resuming from there replays the rest from the store: every seq exactly once overall.
  auto resumed = hub.Subscribe(experiment_, 9);
  ASSERT_TRUE(resumed.ok());
  std::vector<int64_t> all = got;
  for (int64_t s : Drain(**resumed, 12)) all.push_back(s);
  ASSERT_EQ(all.size(), 20u);
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], static_cast<int64_t>(i + 1));
}

TEST_F(EventHubTest, CancelWakesABlockedReaderAndUnregisters) {
  EventHub hub(store_.get(), 4);
  auto sub = hub.Subscribe(experiment_, 1);
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ(hub.stats().watchers, 1);
  std::thread reader([&] {
    auto e = (*sub)->Next(absl::Seconds(30));
    EXPECT_EQ(e.status().code(), absl::StatusCode::kCancelled);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  (*sub)->Cancel();
  reader.join();
  sub->reset();
  EXPECT_EQ(hub.stats().watchers, 0);
}

}  // namespace
}  // namespace mal::server
