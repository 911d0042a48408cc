#ifndef MAL_SERVER_SERVE_OPEN_INFERENCE_H_
#define MAL_SERVER_SERVE_OPEN_INFERENCE_H_

#include <string>
#include <vector>

#include "common/util/grpc_channel.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/serve/au_detection.h"
#include "server/serve/model_store.h"

namespace mal::serve {

// The Open Inference Protocol v2 (KServe / Triton gRPC, proto/inference/grpc_predict_v2.proto) over
// mal-serve's models, for clients that already speak it (tritonclient, KServe). Per model:
//   inputs  IMAGES         BYTES [N]            encoded face crops (JPEG, PNG, BMP): resized and
//                                               normalised as the model's metadata says
//           PIXELS         FP32  [N, 3, S, S]   already preprocessed (S = the model's input side)
//   output  PROBABILITIES  FP32  [N, A]         sigmoid of the AU head, AUs in the order that the
//                                               response parameter "aus" lists ("1,2,4,...")
// One input per request, in `contents` or `raw_input_contents`; the output comes back raw (as
// Triton does). Versions: one, "1". Errors: NOT_FOUND for an unknown model, INVALID_ARGUMENT naming
// the tensor, its shape or the element that cannot be decoded (the protocol has no per-element
// errors), RESOURCE_EXHAUSTED past the server's --max-images, UNAUTHENTICATED without a token.
class OpenInferenceService final : public inference::GRPCInferenceService::Service {
 public:
  OpenInferenceService(ModelStore* models, rpc::TokenTable tokens, DetectLimits limits)
      : models_(models), tokens_(std::move(tokens)), limits_(limits) {}

  grpc::Status ServerLive(grpc::ServerContext* context, const inference::ServerLiveRequest* request,
                          inference::ServerLiveResponse* response) override;
  grpc::Status ServerReady(grpc::ServerContext* context,
                           const inference::ServerReadyRequest* request,
                           inference::ServerReadyResponse* response) override;
  grpc::Status ModelReady(grpc::ServerContext* context, const inference::ModelReadyRequest* request,
                          inference::ModelReadyResponse* response) override;
  grpc::Status ServerMetadata(grpc::ServerContext* context,
                              const inference::ServerMetadataRequest* request,
                              inference::ServerMetadataResponse* response) override;
  grpc::Status ModelMetadata(grpc::ServerContext* context,
                             const inference::ModelMetadataRequest* request,
                             inference::ModelMetadataResponse* response) override;
  grpc::Status ModelInfer(grpc::ServerContext* context, const inference::ModelInferRequest* request,
                          inference::ModelInferResponse* response) override;

 private:
  // The model a request names: `name` is a model (a reference with --registry), `version` the
  // protocol's optional model_version ("1" for a model directory; with a registry, the registry's
  // version, not given in the name as well). NotFound / InvalidArgument otherwise.
  struct Found {
    std::shared_ptr<DynamicBatcher> batcher;
    std::string version;
  };
  absl::StatusOr<Found> Find(const std::string& name, const std::string& version);

  ModelStore* const models_;
  const rpc::TokenTable tokens_;
  const DetectLimits limits_;  // max_images and max_pixels, as DetectActionUnits applies them
};

}  // namespace mal::serve

#endif  // MAL_SERVER_SERVE_OPEN_INFERENCE_H_
