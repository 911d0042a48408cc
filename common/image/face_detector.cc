#include "common/image/face_detector.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <opencv2/core/persistence.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/objdetect.hpp>

#include "absl/strings/str_cat.h"

namespace mal::image {

namespace {

// The threshold of the cascade's last stage, which a window's weight (detectMultiScale's level
// weight) must reach: OpenCV's current format (cascade/stages/*/stageThreshold) and the old one
// (NAME/stages/*/stage_threshold). 0 where the file names none (the weight is then the margin).
double LastStageThreshold(const std::string& path) {
  try {
    cv::FileStorage fs(path, cv::FileStorage::READ);
    if (!fs.isOpened()) return 0;
    cv::FileNode stages = fs["cascade"]["stages"];
    const char* key = "stageThreshold";
    if (stages.empty() || !stages.isSeq()) {
      stages = fs.getFirstTopLevelNode()["stages"];
      key = "stage_threshold";
    }
    if (stages.empty() || !stages.isSeq() || stages.size() == 0) return 0;
    const cv::FileNode threshold = stages[static_cast<int>(stages.size()) - 1][key];
    return threshold.isReal() || threshold.isInt() ? static_cast<double>(threshold) : 0;
  } catch (const cv::Exception&) {
    return 0;
  }
}

}  // namespace

FaceDetector::FaceDetector(std::unique_ptr<cv::CascadeClassifier> cascade,
                           double last_stage_threshold)
    : last_stage_threshold_(last_stage_threshold), cascade_(std::move(cascade)) {}
FaceDetector::~FaceDetector() = default;

absl::StatusOr<std::unique_ptr<FaceDetector>> FaceDetector::Load(const std::string& cascade) {
  const std::string path = cascade.empty() ? kDefaultFaceCascade : cascade;
  if (!std::filesystem::exists(path)) {
    return absl::NotFoundError(
        absl::StrCat(path, ": no such face cascade (Debian: apt-get install opencv-data)"));
  }
  auto classifier = std::make_unique<cv::CascadeClassifier>();
  try {
    if (!classifier->load(path) || classifier->empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not an OpenCV cascade"));
    }
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not an OpenCV cascade: ", e.what()));
  }
  return std::unique_ptr<FaceDetector>(
      new FaceDetector(std::move(classifier), LastStageThreshold(path)));
}

std::vector<DetectedFace> FaceDetector::Detect(const cv::Mat& image, int min_face) const {
  if (image.empty()) return {};
  cv::Mat gray;
  if (image.channels() == 3) {
    cv::cvtColor(image, gray, cv::COLOR_BGR2GRAY);
  } else if (image.channels() == 4) {
    cv::cvtColor(image, gray, cv::COLOR_BGRA2GRAY);
  } else {
    gray = image;
  }
  cv::equalizeHist(gray, gray);
  const int shorter = std::min(gray.cols, gray.rows);
  if (min_face <= 0) min_face = std::max(24, shorter / 10);
  if (min_face > shorter) return {};
  std::vector<cv::Rect> boxes;
  std::vector<int> levels;
  std::vector<double> weights;
  {
    absl::MutexLock lock(&mu_);
    cascade_->detectMultiScale(gray, boxes, levels, weights, 1.1, 5, 0,
                               cv::Size(min_face, min_face), cv::Size(),
                               /*outputRejectLevels=*/true);
  }
  std::vector<DetectedFace> faces;
  for (size_t i = 0; i < boxes.size(); ++i) {
    const double w = i < weights.size() ? weights[i] : 0;
    const double margin = std::max(w - last_stage_threshold_, 0.0);
    faces.push_back({boxes[i], static_cast<float>(1 - std::exp(-margin))});
  }
  std::sort(faces.begin(), faces.end(), [](const DetectedFace& a, const DetectedFace& b) {
    return a.box.area() != b.box.area() ? a.box.area() > b.box.area() : a.box.x < b.box.x;
  });
  return faces;
}

cv::Rect FaceCropBox(const cv::Rect& face, const cv::Size& image, double margin) {
  const double cx = face.x + face.width / 2.0, cy = face.y + face.height / 2.0;
  int side = static_cast<int>(std::lround(std::max(face.width, face.height) * (1 + 2 * margin)));
  side = std::max(1, std::min({side, image.width, image.height}));
  int x = static_cast<int>(std::lround(cx - side / 2.0)),
      y = static_cast<int>(std::lround(cy - side / 2.0));
  x = std::clamp(x, 0, image.width - side);
  y = std::clamp(y, 0, image.height - side);
  return cv::Rect(x, y, side, side);
}

}  // namespace mal::image
