#include "server/serve/serve_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/histogram.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/image/face_tracker.h"
#include "common/predict/track_ids.h"
#include "common/util/grpc_status.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "mal/v1/inference.grpc.pb.h"
#include "server/serve/model_store.h"
#include "server/serve/open_inference.h"
#include "server/service/metrics.h"
#include "worker/engine/au_model.h"

namespace mal::serve {

namespace {

// The gRPC adapter: checks the token, resolves the model, hands the batch to DetectActionUnits.
class InferenceService final : public v1::Inference::Service {
 public:
  InferenceService(ModelStore* models, const image::FaceDetector* detector, rpc::TokenTable tokens,
                   DetectLimits limits)
      : models_(models), detector_(detector), tokens_(std::move(tokens)), limits_(limits) {}

  grpc::Status DetectActionUnits(grpc::ServerContext* context,
                                 const v1::DetectActionUnitsRequest* request,
                                 v1::DetectActionUnitsResponse* response) override {
    if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
    auto model = models_->Get(request->model());
    if (!model.ok()) return ToGrpcStatus(model.status());
    auto result = Detect(**model, *request);
    if (!result.ok()) return ToGrpcStatus(result.status());
    *response = std::move(*result);
    return grpc::Status::OK;
  }

  grpc::Status StreamActionUnits(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::StreamActionUnitsResponse, v1::StreamActionUnitsRequest>* stream)
      override {
    if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
    v1::StreamActionUnitsRequest first;
    if (!stream->Read(&first)) return grpc::Status::OK;
    auto model = models_->Get(first.model());
    if (!model.ok()) return ToGrpcStatus(model.status());
    image::FaceTracker tracker;
    int64_t n = 0;
    v1::StreamActionUnitsRequest message = std::move(first);
    v1::DetectActionUnitsRequest one;
    one.set_model(message.model());
    one.set_face_crop(message.face_crop());
    one.set_min_face(message.min_face());
    do {
      if (!message.has_frame()) continue;
      const auto start = std::chrono::steady_clock::now();
      if (one.images_size() == 0) one.add_images();
      *one.mutable_images(0) = std::move(*message.mutable_frame());
      // Messages name the frame by its number in the stream unless it has an id of its own.
      const bool unnamed = one.images(0).id().empty();
      if (unnamed) one.mutable_images(0)->set_id(absl::StrCat("frame ", n));
      auto result = Detect(**model, one);
      if (!result.ok()) return ToGrpcStatus(result.status());
      if (unnamed) result->mutable_results(0)->clear_id();
      v1::StreamActionUnitsResponse out;
      out.set_frame(n++);
      *out.mutable_result() = std::move(*result->mutable_results(0));
      predict::AssignTrackIds(tracker, *out.mutable_result());
      out.set_latency_ms(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count());
      if (!stream->Write(out)) break;  // the client went away
    } while (stream->Read(&message));
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                          v1::ListModelsResponse* response) override {
    if (grpc::Status s = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !s.ok()) return s;
    auto list = models_->List();
    if (!list.ok()) return ToGrpcStatus(list.status());
    *response = std::move(*list);
    return grpc::Status::OK;
  }

 private:
  // DetectActionUnits with the model call through the model's batcher (shared with other calls).
  absl::StatusOr<v1::DetectActionUnitsResponse> Detect(
      DynamicBatcher& batcher, const v1::DetectActionUnitsRequest& request) {
    DynamicBatcher::Ticket ticket(&batcher);  // this request is under way: worth waiting for
    const v1::ModelMetadata& meta = batcher.model().metadata();
    auto batch = PrepareBatch(meta, detector_, request, limits_);
    if (!batch.ok()) return batch.status();
    if (!batch->crops.empty()) {
      auto probabilities = batcher.Predict(batch->crops);
      if (!probabilities.ok()) return probabilities.status();
      FinishBatch(*batch, meta, *probabilities);
    }
    return std::move(batch->response);
  }

  ModelStore* const models_;
  const image::FaceDetector* const detector_;
  const rpc::TokenTable tokens_;
  const DetectLimits limits_;
};

}  // namespace

struct ServeServer::Parts {
  // First, so that they outlive the models' batchers and the server that report to them.
  std::unique_ptr<server::RpcMetrics> rpc_metrics;
  std::unique_ptr<server::MetricsEndpoint> metrics;
  std::unique_ptr<ModelStore> models;
  std::unique_ptr<image::FaceDetector> detector;
  std::unique_ptr<InferenceService> service;
  std::unique_ptr<OpenInferenceService> open_inference;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  bool shut_down = false;
};

absl::StatusOr<std::unique_ptr<ServeServer>> ServeServer::Start(Options o) {
  const bool registry = !o.registry.address.empty();
  if (o.model_dir.empty() == !registry) {
    return absl::InvalidArgumentError("give one of --model-dir and --registry");
  }
  if (!registry && !std::filesystem::is_directory(o.model_dir)) {
    return absl::NotFoundError(absl::StrCat("--model-dir ", o.model_dir, ": not a directory"));
  }
  if (o.memory_budget <= 0) return absl::InvalidArgumentError("--memory-budget-mb must be > 0");
  // Refused at the start, not at every request after it (a typo, a GPU on a CPU-only build).
  RETURN_IF_ERROR(engine::AuModel::CheckDevice(o.device));
  auto p = std::make_unique<Parts>();
  ModelStore::Options store;
  store.dir = o.model_dir;
  if (registry) {
    ASSIGN_OR_RETURN(store.registry, RegistryCache::Create(o.registry));
  }
  store.device = o.device;
  store.memory_budget = o.memory_budget;
  store.batching = o.batching;
  if (!o.metrics_listen.empty()) {
    p->rpc_metrics = std::make_unique<server::RpcMetrics>();
    ASSIGN_OR_RETURN(p->metrics, server::MetricsEndpoint::Start(o.metrics_listen));
    p->metrics->Register(p->rpc_metrics->registry());
    prometheus::Histogram* crops =
        &prometheus::BuildHistogram()
             .Name("mal_serve_batch_faces")
             .Help("Face crops per model call (dynamic batching across concurrent requests).")
             .Register(*p->rpc_metrics->registry())
             .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
    prometheus::Histogram* seconds =
        &prometheus::BuildHistogram()
             .Name("mal_serve_model_seconds")
             .Help("Time of one model call (one forward pass over a batch of faces).")
             .Register(*p->rpc_metrics->registry())
             .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025,
                                                              0.05, 0.1, 0.25, 0.5, 1, 2.5, 10});
    store.batching.on_model_call = [crops, seconds](int n, double s) {
      crops->Observe(n);
      seconds->Observe(s);
    };
  }
  p->models = std::make_unique<ModelStore>(std::move(store));
  ASSIGN_OR_RETURN(p->detector, image::FaceDetector::Load(o.face_cascade));
  ASSIGN_OR_RETURN(auto credentials, rpc::MakeServerCredentials(o.listen, o.security));
  ASSIGN_OR_RETURN(rpc::TokenTable tokens, rpc::LoadTokens(o.security.token_file));
  p->service =
      std::make_unique<InferenceService>(p->models.get(), p->detector.get(), tokens, o.limits);
  p->open_inference = std::make_unique<OpenInferenceService>(p->models.get(), tokens, o.limits);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.listen, credentials, &p->port);
  rpc::ConfigureServer(builder);
  if (p->rpc_metrics) p->rpc_metrics->Instrument(builder);
  builder.RegisterService(p->service.get());
  builder.RegisterService(p->open_inference.get());
  p->server = builder.BuildAndStart();
  if (p->server == nullptr || p->port == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.listen));
  p->server->GetHealthCheckService()->SetServingStatus(true);
  LOG(INFO) << "serving models from "
            << (registry ? absl::StrCat("the registry at ", o.registry.address, " (cache ",
                                        o.registry.cache_dir, ")")
                         : o.model_dir)
            << " on " << o.listen << " (port " << p->port << ", " << o.device << ")";
  return std::unique_ptr<ServeServer>(new ServeServer(std::move(p)));
}

ServeServer::ServeServer(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}
ServeServer::~ServeServer() { Shutdown(); }
int ServeServer::port() const { return parts_->port; }
int ServeServer::metrics_port() const { return parts_->metrics ? parts_->metrics->port() : 0; }

void ServeServer::Shutdown(std::chrono::milliseconds grace) {
  if (parts_->shut_down) return;
  parts_->shut_down = true;
  parts_->server->GetHealthCheckService()->SetServingStatus(false);
  parts_->server->Shutdown(std::chrono::system_clock::now() + grace);
  parts_->server->Wait();
}

}  // namespace mal::serve
