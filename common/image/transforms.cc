#include "common/image/transforms.h"

#include <algorithm>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/image/image_file.h"
#include "common/util/files.h"

namespace mal::image {

absl::StatusOr<cv::Mat> DecodeImage(const std::string& path) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return absl::DataLossError(absl::StrCat(path, ": missing or unreadable"));
  auto m = DecodeImageBytes(*bytes, path);
  if (!m.ok()) return absl::DataLossError(m.status().message());
  return m;
}

cv::Mat CropBox(const cv::Mat& bgr, const int box[4]) {
  if (box[2] <= 0 || box[3] <= 0) return bgr;
  const cv::Rect r = cv::Rect(box[0], box[1], box[2], box[3]) & cv::Rect(0, 0, bgr.cols, bgr.rows);
  if (r.area() == 0) return bgr;
  return bgr(r);
}

void TransformToTensor(const cv::Mat& bgr, const TransformOptions& o, Rng* rng, float* out) {
  cv::Mat resized;
  if (bgr.cols == o.resize && bgr.rows == o.resize) {
    resized = bgr;
  } else {
    const bool shrinking = bgr.cols > o.resize && bgr.rows > o.resize;
    cv::resize(bgr, resized, cv::Size(o.resize, o.resize), 0, 0,
               shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  }
  const int span = o.resize - o.crop;
  int x0 = span / 2, y0 = span / 2;
  bool flip = false;
  if (rng != nullptr) {
    x0 = static_cast<int>(rng->IntIn(0, span));
    y0 = static_cast<int>(rng->IntIn(0, span));
    flip = o.hflip && rng->Bernoulli(0.5);
  }
  // BGR uint8 HWC -> RGB float CHW, normalised, flipped, in one pass.
  const int c = o.crop;
  const size_t plane = static_cast<size_t>(c) * c;
  float scale[3], shift[3];
  for (int ch = 0; ch < 3; ++ch) {
    scale[ch] = 1.0f / (255.0f * o.std[ch]);
    shift[ch] = -o.mean[ch] / o.std[ch];
  }
  for (int y = 0; y < c; ++y) {
    const uint8_t* row = resized.ptr<uint8_t>(y0 + y) + 3 * x0;
    float* r_out = out + static_cast<size_t>(y) * c;
    float* g_out = r_out + plane;
    float* b_out = g_out + plane;
    for (int x = 0; x < c; ++x) {
      const uint8_t* px = row + 3 * (flip ? c - 1 - x : x);
      r_out[x] = px[2] * scale[0] + shift[0];
      g_out[x] = px[1] * scale[1] + shift[1];
      b_out[x] = px[0] * scale[2] + shift[2];
    }
  }
}

}  // namespace mal::image
