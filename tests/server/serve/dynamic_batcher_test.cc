#include "server/serve/dynamic_batcher.h"

#include <gtest/gtest.h>

#include <thread>

#include "tests/test_util.h"
#include "tests/worker/engine/model_fixture.h"

namespace mal::serve {
namespace {

cv::Mat Grey(int value) { return cv::Mat(40, 40, CV_8UC3, cv::Scalar(value, value, value)); }

class DynamicBatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteTestModel(dir_ / "m");
    auto model = engine::AuModel::Load(dir_ / "m");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  testing::TempDir dir_;
  std::shared_ptr<const engine::AuModel> model_;
};

TEST_F(DynamicBatcherTest, ConcurrentCallsShareModelCallsAndGetTheirOwnRows) {
  DynamicBatcher::Options o;
  o.max_batch = 64;
  o.max_delay = std::chrono::milliseconds(200);  // generous: every thread joins the first batch
  DynamicBatcher batcher(model_, o);
  constexpr int kThreads = 8;
  std::vector<std::vector<float>> got(kThreads);
  std::vector<std::thread> threads;
  // Eight requests under way at once (tickets first): the model waits for all of them.
  std::vector<DynamicBatcher::Ticket> tickets;
  for (int t = 0; t < kThreads; ++t) tickets.emplace_back(&batcher);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t, ticket = std::move(tickets[static_cast<size_t>(t)])] {
      auto p = batcher.Predict({Grey(20 * t), Grey(20 * t + 10)});
      if (p.ok()) got[static_cast<size_t>(t)] = *p;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(batcher.crops(), 2 * kThreads);
  EXPECT_EQ(batcher.model_calls(), 1);  // one forward pass for all eight
  for (int t = 0; t < kThreads; ++t) {
    auto alone = model_->Predict({Grey(20 * t), Grey(20 * t + 10)});
    ASSERT_TRUE(alone.ok());
    ASSERT_EQ(got[static_cast<size_t>(t)].size(), alone->size()) << t;
    for (size_t i = 0; i < alone->size(); ++i)
      EXPECT_NEAR(got[static_cast<size_t>(t)][i], (*alone)[i], 1e-5);
  }
}

TEST_F(DynamicBatcherTest, ALoneRequestDoesNotWaitForCompany) {
  DynamicBatcher::Options o;
  o.max_delay = std::chrono::seconds(60);
  DynamicBatcher batcher(model_, o);
  const auto start = std::chrono::steady_clock::now();
  {
    DynamicBatcher::Ticket ticket(&batcher);
    ASSERT_TRUE(batcher.Predict({Grey(10)}).ok());
  }
  ASSERT_TRUE(batcher.Predict({Grey(20)}).ok());  // no ticket at all
  EXPECT_LT(std::chrono::steady_clock::now() - start,
            std::chrono::seconds(30));  // not the 60 s delay
  EXPECT_EQ(batcher.model_calls(), 2);
}

TEST_F(DynamicBatcherTest, OneCallPerCropWithoutBatchingAndEmptyOrFailingCalls) {
  DynamicBatcher::Options o;
  o.max_batch = 1;
  DynamicBatcher batcher(model_, o);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] { EXPECT_TRUE(batcher.Predict({Grey(50)}).ok()); });
  for (auto& t : threads) t.join();
  EXPECT_EQ(batcher.model_calls(), 4);
  // Larger than max_batch: runs alone, whole.
  auto big = batcher.Predict({Grey(1), Grey(2), Grey(3)});
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->size(), 3u * 4);
  EXPECT_TRUE(batcher.Predict({})->empty());
  // The model's error reaches the caller.
  EXPECT_EQ(batcher.Predict({cv::Mat()}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mal::serve
