#ifndef MAL_COMMON_IMAGE_FACE_DETECTOR_H_
#define MAL_COMMON_IMAGE_FACE_DETECTOR_H_

#include <memory>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace cv {
class CascadeClassifier;
}

namespace mal::image {

// Where Debian's opencv-data puts OpenCV's frontal face cascade: "alt" (the one OpenCV's face
// detection sample uses), not "default". On real photographs (docs/serving.md "Face detection",
// tests/bench/face_detection.sh) they find about the same faces, and "default" also boxes coins,
// a moon crater, a medical phantom and a crowd: 72 false boxes in 182 images against 1 for "alt".
inline constexpr char kDefaultFaceCascade[] =
    "/usr/share/opencv4/haarcascades/haarcascade_frontalface_alt.xml";

struct DetectedFace {
  cv::Rect box;  // px in the image
  // 0..1: 1 - exp(-m) of the margin m by which the window passed the cascade's last stage (its
  // weight minus that stage's threshold, as the cascade file states it). A ranking within one
  // cascade, not a calibrated probability: false boxes score as high as faces.
  float confidence = 0;
};

// Frontal faces with an OpenCV Haar cascade (Viola-Jones; opencv-data).
class FaceDetector {
 public:
  // Loads the cascade file (empty: kDefaultFaceCascade). NotFound / InvalidArgument naming it.
  static absl::StatusOr<std::unique_ptr<FaceDetector>> Load(const std::string& cascade = "");
  ~FaceDetector();

  // Faces in an 8-bit BGR or grey image, largest first; none smaller than `min_face` px (0: a tenth
  // of the shorter side, at least 24). Thread-safe (calls are serialised: the cascade keeps state).
  std::vector<DetectedFace> Detect(const cv::Mat& image, int min_face = 0) const;

  // The weight a window must reach at the cascade's last stage (read from the file; 0 where it
  // names none). DetectedFace::confidence is 1 - exp(-(weight - this)).
  double last_stage_threshold() const { return last_stage_threshold_; }

 private:
  FaceDetector(std::unique_ptr<cv::CascadeClassifier> cascade, double last_stage_threshold);
  const double last_stage_threshold_;  // of the cascade file; 0 where it names none
  mutable absl::Mutex mu_;
  std::unique_ptr<cv::CascadeClassifier> cascade_ ABSL_GUARDED_BY(mu_);
};

// The square crop around `face` that adds `margin` of its side on every side (0.25: a box 1.5x the
// face's side), shifted and then clipped to stay inside `image`. Detectors box the inner face
// (brows to mouth); the models were trained on whole faces with some context.
cv::Rect FaceCropBox(const cv::Rect& face, const cv::Size& image, double margin = 0.25);

}  // namespace mal::image

#endif  // MAL_COMMON_IMAGE_FACE_DETECTOR_H_
