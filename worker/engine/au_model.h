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
  // Whether models can be loaded on `device` ("cpu", "cuda", "cuda:N") here: InvalidArgument for
  // another name or a GPU index not visible, FailedPrecondition for cuda on a CPU-only LibTorch or
  // a host without a GPU (engine::ParseDevice's errors, field "--device"). For a server's start.
  static absl::Status CheckDevice(const std::string& device);

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

  // Writes the weights as a PyTorch state dict that Python's torch.load reads (a dict of tensor
  // name -> CPU tensor, torch.save's zip format), and the metadata JSON beside it at
  // `path` with ".json" in place of its extension. Names: the backbone's own (torchvision's for
  // the ResNets, so torchvision.models.resnetNN(num_classes=len(aus)) loads the file after the
  // fe_head.* entries are dropped), the AU head as fc.weight / fc.bias, the FE head as fe_head.*.
  // Both files through temporary files. Errors: DataLoss naming the path.
  absl::Status ExportStateDict(const std::string& path) const;

  // The reverse: a state dict in ExportStateDict's naming (written by PyTorch or by mal, zip or
  // legacy format) and its metadata JSON become a run-directory model in `out_dir` (model.pt,
  // model.json) that Load, mal-serve and mal-worker predict use. Every backbone and AU head entry
  // must be present with the network's shape; fe_head.* may be absent (it is not used for AU
  // inference). Errors name the file and the entries that are missing, unknown or mis-shaped.
  static absl::Status ImportStateDict(const std::string& state_dict, const std::string& metadata,
                                      const std::string& out_dir);

  // AU probabilities of N inputs already preprocessed: `nchw` holds N x 3 x input x input floats,
  // resized, centre-cropped and normalised as metadata() says (the Open Inference Protocol's FP32
  // input). Returns N x A. Errors: InvalidArgument when the size is not a multiple of one image,
  // and Predict's model errors.
  absl::StatusOr<std::vector<float>> PredictNormalized(const std::vector<float>& nchw) const;

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
