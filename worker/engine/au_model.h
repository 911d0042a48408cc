#ifndef MAL_WORKER_ENGINE_AU_MODEL_H_
#define MAL_WORKER_ENGINE_AU_MODEL_H_

#include <cstdint>
#include <memory>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mal/v1/inference.pb.h"

namespace mal::engine {

// A trained AU detector for inference: a run directory's model.pt (the weights, as the trainer's
// Export writes them) and model.json (ModelMetadata: backbone, AUs, input and resize,
// normalisation, thresholds). No torch in this header.
class AuModel {
 public:
  // Loads `dir`/model.json and `dir`/model.pt onto `device` ("cpu", "cuda", "cuda:N"). Errors:
  // NotFound naming a missing file, InvalidArgument naming a bad metadata field or device,
  // DataLoss when model.pt cannot be read or does not fit the metadata's network.
  static absl::StatusOr<std::unique_ptr<AuModel>> Load(const std::string& dir,
                                                       const std::string& device = "cpu");
  ~AuModel();
  AuModel(const AuModel&) = delete;
  AuModel& operator=(const AuModel&) = delete;

  const v1::ModelMetadata& metadata() const;
  // Bytes of the parameters and buffers (the memory the model holds on its device).
  int64_t bytes() const;

  // AU probabilities of N face crops (8-bit BGR or grey, any size): each is resized to resize x
  // resize px, centre-cropped to input x input and normalised as in the trainer's evaluation
  // (common/image/transforms.h), then sigmoid of the AU head. Returns N x A values, row-major, in
  // metadata().aus order. Safe to call from several threads at once. Errors: InvalidArgument for an
  // empty or non-8-bit image (naming its index), ResourceExhausted when the device runs out of
  // memory, Internal for another LibTorch error.
  absl::StatusOr<std::vector<float>> Predict(const std::vector<cv::Mat>& faces) const;

 private:
  struct Impl;
  explicit AuModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_AU_MODEL_H_
