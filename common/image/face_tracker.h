#ifndef MAL_COMMON_IMAGE_FACE_TRACKER_H_
#define MAL_COMMON_IMAGE_FACE_TRACKER_H_

#include <opencv2/core.hpp>
#include <vector>

namespace mal::image {

// Intersection over union of two boxes, 0..1.
double BoxIou(const cv::Rect& a, const cv::Rect& b);

// Stable face ids across the frames of one video or camera, by box overlap (IoU), for results that
// must say "the same person as in the last frame" without a face recogniser. Not thread-safe: one
// tracker per stream.
class FaceTracker {
 public:
  // A face keeps its id when its box overlaps a live track's last box by at least `min_iou`; a
  // track not seen for more than `max_missed` frames ends (its id is not reused).
  explicit FaceTracker(double min_iou = 0.3, int max_missed = 10)
      : min_iou_(min_iou), max_missed_(max_missed) {}

  // The ids (0, 1, ... in order of first appearance) of this frame's faces, in the order given.
  // Pairs are matched greedily, highest IoU first; each track and each face is used once.
  std::vector<int> Update(const std::vector<cv::Rect>& boxes);

 private:
  struct Track {
    int id;
    cv::Rect box;
    int missed;
  };
  double min_iou_;
  int max_missed_;
  std::vector<Track> tracks_;
  int next_id_ = 0;
};

}  // namespace mal::image

#endif  // MAL_COMMON_IMAGE_FACE_TRACKER_H_
