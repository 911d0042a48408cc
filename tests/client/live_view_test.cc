#include "client/live_view.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

namespace mal::cli {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

v1::Event Point(int epoch, int64_t iteration, double seconds, int attempt = 1) {
  v1::Event e;
  e.set_trial(0);
  e.set_fold(1);
  e.set_attempt(attempt);
  v1::TrainingPoint* p = e.mutable_point();
  p->set_epoch(epoch);
  p->set_iteration(iteration);
  p->set_seconds(seconds);
  p->set_loss_au(0.5);
  p->set_loss_val(-1);
  return e;
}

// The run's line: the first line after the title.
std::string RunLine(const LiveView& view) {
  const std::vector<std::string> lines = view.Lines(200);
  return lines.size() > 1 ? lines[1] : "";
}

// Once an epoch was seen whole (10 iterations of 1 s), the line has a progress bar and an ETA:
// epoch 2 of 3 halfway through (its 5th of 10 iterations) leaves 15 iterations, 0:15.
TEST(LiveViewTest, ProgressAndEtaFromTheLengthOfAnEpoch) {
  std::ostringstream out;
  LiveView view(out, "exp", /*epochs=*/3, /*runs_total=*/1);
  for (int i = 1; i <= 10; ++i) view.Add(Point(1, i, 1.0));
  EXPECT_THAT(RunLine(view), HasSubstr("ETA --:--"));  // epoch 1 not yet seen whole
  for (int i = 11; i <= 15; ++i) view.Add(Point(2, i, 1.0));
  const std::string line = RunLine(view);
  EXPECT_THAT(line, HasSubstr("t0/f1   ep 2/3 it 15 [##########..........]"));
  EXPECT_THAT(line, HasSubstr("ETA 0:15"));
}

// A run that starts over (a retry without a checkpoint, or halved batches after running out of
// device memory) forgets its epoch length and speed, and the view says so.
TEST(LiveViewTest, ARunThatStartsOverForgetsItsEpochLength) {
  std::ostringstream out;
  LiveView view(out, "exp", 3, 1);
  for (int i = 1; i <= 15; ++i) view.Add(Point(i <= 10 ? 1 : 2, i, 1.0));
  view.Add(Point(1, 1, 0.5, /*attempt=*/1));
  const std::string line = RunLine(view);
  EXPECT_THAT(line, HasSubstr("ep 1/3 it 1 [....................]"));
  EXPECT_THAT(line, HasSubstr("ETA --:--"));
  EXPECT_THAT(view.Lines(200),
              Contains(HasSubstr("t0/f1 started over at iteration 1 (attempt 1)")));
  // The new epoch length (20 iterations) is learned again: 39 iterations of 0.5 s left.
  for (int i = 2; i <= 20; ++i) view.Add(Point(1, i, 0.5));
  view.Add(Point(2, 21, 0.5));
  EXPECT_THAT(RunLine(view), HasSubstr("ETA 0:19"));
}

}  // namespace
}  // namespace mal::cli
