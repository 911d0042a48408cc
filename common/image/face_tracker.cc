#include "common/image/face_tracker.h"

#include <algorithm>
#include <tuple>

namespace mal::image {

double BoxIou(const cv::Rect& a, const cv::Rect& b) {
  const double inter = (a & b).area();
  const double uni = static_cast<double>(a.area()) + b.area() - inter;
  return uni > 0 ? inter / uni : 0;
}

std::vector<int> FaceTracker::Update(const std::vector<cv::Rect>& boxes) {
  std::vector<std::tuple<double, size_t, size_t>> pairs;  // (iou, face, track)
  for (size_t f = 0; f < boxes.size(); ++f) {
    for (size_t t = 0; t < tracks_.size(); ++t) {
      const double iou = BoxIou(boxes[f], tracks_[t].box);
      if (iou >= min_iou_) pairs.emplace_back(iou, f, t);
    }
  }
  std::sort(pairs.begin(), pairs.end(),
            [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  std::vector<int> ids(boxes.size(), -1);
  std::vector<bool> track_used(tracks_.size(), false);
  for (const auto& [iou, f, t] : pairs) {
    if (ids[f] >= 0 || track_used[t]) continue;
    ids[f] = tracks_[t].id;
    track_used[t] = true;
    tracks_[t].box = boxes[f];
    tracks_[t].missed = 0;
  }
  for (size_t t = 0; t < tracks_.size(); ++t) {
    if (!track_used[t]) ++tracks_[t].missed;
  }
  tracks_.erase(std::remove_if(tracks_.begin(), tracks_.end(),
                               [this](const Track& t) { return t.missed > max_missed_; }),
                tracks_.end());
  for (size_t f = 0; f < boxes.size(); ++f) {
    if (ids[f] >= 0) continue;
    ids[f] = next_id_++;
    tracks_.push_back({ids[f], boxes[f], 0});
  }
  return ids;
}

}  // namespace mal::image
