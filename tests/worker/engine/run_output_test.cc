#include "worker/engine/run_output.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/util/files.h"
#include "tests/test_util.h"

namespace mal::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

IterationRecord Iteration(int epoch, int64_t iteration) {
  IterationRecord r;
  r.epoch = epoch;
  r.iteration = iteration;
  return r;
}

TEST(RunLogTest, ResumeKeepsWhatCameBeforeTheCheckpointAndDropsTheRest) {
  testing::TempDir dir;
  {
    auto log = RunLog::Open(dir.path(), -1, 1);
    ASSERT_TRUE(log.ok()) << log.status();
    for (int64_t it = 1; it <= 6; ++it) {
      (*log)->Iteration(Iteration(it <= 3 ? 1 : 2, it));
      WeightSummary s;
      s.epoch = it <= 3 ? 1 : 2;
      s.iteration = it;
      (*log)->Summary(s);
      if (it % 3 == 0) {
        EpochRecord e;
        e.epoch = static_cast<int>(it / 3);
        e.iteration = it;
        e.test_mean_f1 = 0.25 * e.epoch;
        ASSERT_TRUE((*log)->Epoch(e).ok());
      }
    }
  }
  // A checkpoint at iteration 4, in epoch 2: epoch 1's record stays, epoch 2's goes.
  auto resumed = RunLog::Open(dir.path(), 4, 2);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EpochRecord e;
  e.epoch = 2;
  e.iteration = 6;
  e.test_mean_f1 = 0.75;
  ASSERT_TRUE((*resumed)->Epoch(e).ok());
  const std::string records = *ReadFile(dir / "records.csv");
  EXPECT_THAT(records, HasSubstr("\n2,4,"));  // epoch, iteration, ...
  EXPECT_THAT(records, Not(HasSubstr("\n2,5,")));
  EXPECT_THAT(records, HasSubstr("epoch,iteration"));  // the header stays
  const std::string summaries = *ReadFile(dir / "summaries.jsonl");
  EXPECT_THAT(summaries, HasSubstr("\"iteration\": 4"));
  EXPECT_THAT(summaries, Not(HasSubstr("\"iteration\": 5")));
  const std::string metrics = *ReadFile(dir / "metrics.json");
  EXPECT_THAT(metrics, HasSubstr("\"test_mean_f1\": 0.250000"));
  EXPECT_THAT(metrics, Not(HasSubstr("0.500000")));  // epoch 2 as first written is gone
  EXPECT_THAT(metrics, HasSubstr("\"test_mean_f1\": 0.750000"));
}

TEST(RunLogTest, ALineTornByAKillIsDroppedNotFatal) {
  testing::TempDir dir;
  testing::WriteText(dir / "records.csv", "epoch,iteration\n1,1\n");
  testing::WriteText(dir / "summaries.jsonl",
                     "{\"epoch\": 1, \"iteration\": 1}\n{\"epoch\": 1, \"itera");
  auto log = RunLog::Open(dir.path(), 1, 2);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ(*ReadFile(dir / "summaries.jsonl"), "{\"epoch\": 1, \"iteration\": 1}\n");
}

// Records that reached the coordinator without their first rows (an earlier attempt's upload cut
// short by a kill) get their header back on resume, keep only whole rows up to the checkpoint,
// and a missing file is created with its header, so plots and exports can read them.
TEST(RunLogTest, ResumedRecordsAlwaysStartWithTheirHeader) {
  testing::TempDir dir;
  const std::string header =
      "epoch,iteration,loss_au,loss_fe,loss_val,mean_w_au,mean_w_fe,"
      "mean_wn_au,mean_wn_fe,lr,meta_lr,seconds\n";
  testing::WriteText(dir / "records.csv",
                     "1,6,1,1,1,1,1,1,1,1,1,1\n1,7,1,1,1,1,1,1,1,1,1,1\n2,11,1,1,1,1,1,1,1,1,1,1\n"
                     "2,12,1,1\n");
  ASSERT_TRUE(RunLog::Open(dir.path(), 11, 2).ok());
  EXPECT_EQ(*ReadFile(dir / "records.csv"), header +
                                                "1,6,1,1,1,1,1,1,1,1,1,1\n1,7,1,1,1,1,1,1,1,1,1,1\n"
                                                "2,11,1,1,1,1,1,1,1,1,1,1\n");
  testing::TempDir empty;
  auto log = RunLog::Open(empty.path(), 20, 3);
  ASSERT_TRUE(log.ok()) << log.status();
  (*log)->Iteration(Iteration(3, 21));
  const std::string records = *ReadFile(empty / "records.csv");
  EXPECT_EQ(records.substr(0, header.size()), header);
  EXPECT_THAT(records, HasSubstr("\n3,21,"));
}

}  // namespace
}  // namespace mal::engine
