#include "common/image/face_tracker.h"

#include <gtest/gtest.h>

namespace mal::image {
namespace {

TEST(FaceTrackerTest, IouOfBoxes) {
  EXPECT_DOUBLE_EQ(BoxIou(cv::Rect(0, 0, 10, 10), cv::Rect(0, 0, 10, 10)), 1.0);
  EXPECT_DOUBLE_EQ(BoxIou(cv::Rect(0, 0, 10, 10), cv::Rect(5, 0, 10, 10)), 50.0 / 150.0);
  EXPECT_DOUBLE_EQ(BoxIou(cv::Rect(0, 0, 10, 10), cv::Rect(20, 20, 5, 5)), 0.0);
  EXPECT_DOUBLE_EQ(BoxIou(cv::Rect(), cv::Rect()), 0.0);
}

TEST(FaceTrackerTest, IdsFollowMovingFacesAndAreNeverReused) {
  FaceTracker tracker(/*min_iou=*/0.3, /*max_missed=*/2);
  EXPECT_EQ(tracker.Update({cv::Rect(0, 0, 100, 100), cv::Rect(300, 0, 80, 80)}),
            (std::vector<int>{0, 1}));
  // Both move a little and come in the other order (the detector sorts by size): same ids.
  EXPECT_EQ(tracker.Update({cv::Rect(305, 5, 90, 90), cv::Rect(10, 0, 100, 100)}),
            (std::vector<int>{1, 0}));
  // A third face appears; face 1 leaves.
  EXPECT_EQ(tracker.Update({cv::Rect(12, 2, 100, 100), cv::Rect(600, 0, 50, 50)}),
            (std::vector<int>{0, 2}));
  // Face 1 comes back within max_missed frames: its id again.
  EXPECT_EQ(tracker.Update({cv::Rect(300, 0, 90, 90)}), (std::vector<int>{1}));
  // Gone for longer than max_missed: a new id, never an old one.
  tracker.Update({});
  tracker.Update({});
  tracker.Update({});
  EXPECT_EQ(tracker.Update({cv::Rect(0, 0, 100, 100)}), (std::vector<int>{3}));
}

TEST(FaceTrackerTest, TheBestOverlapWinsWhenTwoFacesCompeteForATrack) {
  FaceTracker tracker;
  tracker.Update({cv::Rect(0, 0, 100, 100)});
  // Both overlap track 0; the closer one keeps it, the other is new.
  EXPECT_EQ(tracker.Update({cv::Rect(40, 0, 100, 100), cv::Rect(5, 0, 100, 100)}),
            (std::vector<int>{1, 0}));
}

}  // namespace
}  // namespace mal::image
