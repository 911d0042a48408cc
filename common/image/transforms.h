#ifndef MAL_COMMON_IMAGE_TRANSFORMS_H_
#define MAL_COMMON_IMAGE_TRANSFORMS_H_

#include <opencv2/core.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "common/image/image_file.h"
#include "common/util/random.h"

namespace mal::image {

// How an image becomes network input. Training: resize to resize x resize, random crop x crop,
// random horizontal flip. Evaluation: resize, centre crop. Both normalise with mean/std (RGB).
struct TransformOptions {
  int resize = 256;
  int crop = 224;
  bool hflip = true;
  float mean[3] = {0.485f, 0.456f, 0.406f};  // ImageNet, RGB order
  float std[3] = {0.229f, 0.224f, 0.225f};
};

// Decodes an image file to 8-bit BGR. Errors (DataLoss) name the path: a missing file, an
// incomplete container (CheckImageComplete in image_file.h: a truncated JPEG, PNG or BMP is not
// decoded into a partly grey image), or bytes OpenCV cannot decode.
absl::StatusOr<cv::Mat> DecodeImage(const std::string& path);
// (DecodeImageBytes, for encoded bytes, is in image_file.h.)

// Crops `box` (x, y, w, h; w == 0 = whole image, clipped to the image) out of `bgr`.
cv::Mat CropBox(const cv::Mat& bgr, const int box[4]);

// Writes 3 x crop x crop floats, channel-major RGB, normalised, to `out`. With `rng` the training
// augmentation is drawn from it; with nullptr the deterministic evaluation transform is used.
void TransformToTensor(const cv::Mat& bgr, const TransformOptions& options, Rng* rng, float* out);

}  // namespace mal::image

#endif  // MAL_COMMON_IMAGE_TRANSFORMS_H_
