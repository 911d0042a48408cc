#ifndef MAL_SERVER_SERVE_AU_DETECTION_H_
#define MAL_SERVER_SERVE_AU_DETECTION_H_

#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/image/face_detector.h"
#include "mal/v1/inference.pb.h"
#include "worker/engine/au_model.h"

namespace mal::serve {

// Limits of one DetectActionUnits call.
struct DetectLimits {
  int max_images = 256;             // images per request
  int64_t max_pixels = 40'000'000;  // per image, width x height (a 40 MP photo)
  int max_faces_per_image = 32;     // the largest ones are kept
};

// The 8-bit image of one input (encoded bytes, decoded after their declared size passed
// limits.max_pixels, or a raw frame), or InvalidArgument / DataLoss naming `what` and why it cannot
// be read. The one reader of images for DetectActionUnits and the Open Inference Protocol.
absl::StatusOr<cv::Mat> ReadImageInput(const v1::ImageInput& in, const std::string& what,
                                       const DetectLimits& limits);

// Faces and their AUs in a batch of images, gRPC-free (mal-serve's RPC and `mal-worker predict`
// share it). Each image is decoded (encoded JPEG/PNG/BMP bytes through image_file.h's decoder, or
// a raw 8-bit frame), its faces found by `detector` (or the whole image is the face with
// request.face_crop; `detector` may then be null), each face cropped square with a margin
// (FaceCropBox), and all faces of the batch go through `model` in one call. An image that cannot be
// read gets code INVALID_ARGUMENT and a message in its own result; the rest are answered.
// Errors for the whole batch: ResourceExhausted for more than limits.max_images images,
// FailedPrecondition for no detector without face_crop, the model's errors (ResourceExhausted,
// Internal).
// DetectActionUnits in two halves around the model call, for callers that batch model calls
// across requests (DynamicBatcher): PrepareBatch decodes, detects and crops (the errors of
// DetectActionUnits before the model runs; per-image errors in their results), FinishBatch fills in
// each face's AUs from `probabilities` (crops.size() x A, row-major, metadata's AU order).
struct PreparedBatch {
  v1::DetectActionUnitsResponse response;   // every image's result, faces without AUs yet
  std::vector<cv::Mat> crops;               // every face crop, in order
  std::vector<std::pair<int, int>> owners;  // per crop: (image index, face index)
};
absl::StatusOr<PreparedBatch> PrepareBatch(const v1::ModelMetadata& metadata,
                                           const image::FaceDetector* detector,
                                           const v1::DetectActionUnitsRequest& request,
                                           const DetectLimits& limits = {});
void FinishBatch(PreparedBatch& batch, const v1::ModelMetadata& metadata,
                 const std::vector<float>& probabilities);

absl::StatusOr<v1::DetectActionUnitsResponse> DetectActionUnits(
    const engine::AuModel& model, const image::FaceDetector* detector,
    const v1::DetectActionUnitsRequest& request, const DetectLimits& limits = {});

}  // namespace mal::serve

#endif  // MAL_SERVER_SERVE_AU_DETECTION_H_
