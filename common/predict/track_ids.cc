#include "common/predict/track_ids.h"

#include <vector>

namespace mal::predict {

void AssignTrackIds(image::FaceTracker& tracker, v1::ImageResult& result) {
  std::vector<cv::Rect> boxes;
  for (const v1::FaceResult& f : result.faces()) {
    boxes.emplace_back(f.box().x(), f.box().y(), f.box().width(), f.box().height());
  }
  const std::vector<int> ids = tracker.Update(boxes);
  for (int i = 0; i < result.faces_size(); ++i) {
    result.mutable_faces(i)->set_face_id(ids[static_cast<size_t>(i)]);
  }
}

}  // namespace mal::predict
