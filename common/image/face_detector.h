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

// Where Debian's opencv-data puts OpenCV's frontal face cascade.
inline constexpr char kDefaultFaceCascade[] =
    "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

struct DetectedFace {
  cv::Rect box;  // px in the image
  // 0..1, 1 - exp(-w / 4) of the cascade's last-stage weight w (about 5-11 for clear frontal
  // faces: 0.7-0.94): a ranking, not a calibrated probability.
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

 private:
  explicit FaceDetector(std::unique_ptr<cv::CascadeClassifier> cascade);
  mutable absl::Mutex mu_;
  std::unique_ptr<cv::CascadeClassifier> cascade_ ABSL_GUARDED_BY(mu_);
};

// The square crop around `face` that adds `margin` of its side on every side (0.25: a box 1.5x the
// face's side), shifted and then clipped to stay inside `image`. Detectors box the inner face
// (brows to mouth); the models were trained on whole faces with some context.
cv::Rect FaceCropBox(const cv::Rect& face, const cv::Size& image, double margin = 0.25);

}  // namespace mal::image

#endif  // MAL_COMMON_IMAGE_FACE_DETECTOR_H_
