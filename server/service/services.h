#ifndef MAL_SERVER_SERVICE_SERVICES_H_
#define MAL_SERVER_SERVICE_SERVICES_H_

// Thin gRPC adapters over the coordinator core: each method converts the status and nothing else,
// except the two streams: Watch writes what a WatchSession (server/events/watch_session.h) returns,
// artifact transfers loop over the core's upload pieces.
// Every method starts with rpc::CheckToken (gRPC 1.51 has no clean server-side hook that works
// over plaintext too): a new RPC must start with it as well.

#include <atomic>
#include <string>
#include <vector>

#include "common/util/grpc_channel.h"
#include "mal/v1/service.grpc.pb.h"
#include "server/core/coordinator.h"
#include "server/core/model_registry.h"
#include "server/service/rate_limiter.h"

namespace mal::server {

class CoordinatorService final : public v1::Coordinator::Service {
 public:
  // `hub`: the event hub the core publishes to (Watch subscribes there). `tokens`: bearer tokens
  // a call must carry one of (none: no token required).
  // `submit_per_minute`: submissions per client (its token, or its address without tokens)
  // within a minute; 0: unlimited.
  CoordinatorService(Coordinator* core, EventHub* hub, rpc::TokenTable tokens = {},
                     int submit_per_minute = 0)
      : core_(core),
        hub_(hub),
        tokens_(std::move(tokens)),
        submit_limit_(submit_per_minute),
        submits_(submit_per_minute, 60000) {}
  // Ends open Watch streams (graceful shutdown).
  void Shutdown() { shutting_down_ = true; }

  grpc::Status SubmitExperiment(grpc::ServerContext*, const v1::SubmitExperimentRequest*,
                                v1::SubmitExperimentResponse*) override;
  grpc::Status GetExperiment(grpc::ServerContext*, const v1::GetExperimentRequest*,
                             v1::ExperimentInfo*) override;
  grpc::Status ListExperiments(grpc::ServerContext*, const v1::ListExperimentsRequest*,
                               v1::ListExperimentsResponse*) override;
  grpc::Status CancelExperiment(grpc::ServerContext*, const v1::CancelExperimentRequest*,
                                v1::ExperimentInfo*) override;
  grpc::Status DeleteExperiment(grpc::ServerContext*, const v1::DeleteExperimentRequest*,
                                v1::DeleteExperimentResponse*) override;
  grpc::Status WaitExperiment(grpc::ServerContext*, const v1::WaitExperimentRequest*,
                              v1::ExperimentInfo*) override;
  grpc::Status Watch(grpc::ServerContext*, const v1::WatchRequest*,
                     grpc::ServerWriter<v1::WatchResponse>*) override;
  grpc::Status GetResults(grpc::ServerContext*, const v1::ResultsRequest*,
                          v1::ResultsResponse*) override;
  grpc::Status ListWorkers(grpc::ServerContext*, const v1::ListWorkersRequest*,
                           v1::ListWorkersResponse*) override;
  grpc::Status ListArtifacts(grpc::ServerContext*, const v1::ArtifactRequest*,
                             v1::ListArtifactsResponse*) override;
  grpc::Status DownloadArtifact(grpc::ServerContext*, const v1::ArtifactRequest*,
                                grpc::ServerWriter<v1::ArtifactChunk>*) override;

 private:
  Coordinator* const core_;
  EventHub* const hub_;
  const rpc::TokenTable tokens_;
  const int submit_limit_;
  RateLimiter submits_;
  std::atomic<bool> shutting_down_{false};
};

// The model registry (server/core/model_registry.h) for clients and mal-serve --registry.
class ModelRegistryService final : public v1::ModelRegistry::Service {
 public:
  ModelRegistryService(ModelRegistry* registry, rpc::TokenTable tokens = {})
      : registry_(registry), tokens_(std::move(tokens)) {}

  grpc::Status ListRegisteredModels(grpc::ServerContext*, const v1::ListRegisteredModelsRequest*,
                                    v1::ListRegisteredModelsResponse*) override;
  grpc::Status GetModel(grpc::ServerContext*, const v1::GetModelRequest*, v1::ModelInfo*) override;
  grpc::Status SetModelAlias(grpc::ServerContext*, const v1::SetModelAliasRequest*,
                             v1::ModelInfo*) override;
  grpc::Status DeleteModelAlias(grpc::ServerContext*, const v1::DeleteModelAliasRequest*,
                                v1::ModelInfo*) override;
  grpc::Status DeleteModel(grpc::ServerContext*, const v1::DeleteModelRequest*,
                           v1::ModelInfo*) override;
  grpc::Status DownloadModel(grpc::ServerContext*, const v1::DownloadModelRequest*,
                             grpc::ServerWriter<v1::ArtifactChunk>*) override;

 private:
  ModelRegistry* const registry_;
  const rpc::TokenTable tokens_;
};

class WorkerGatewayService final : public v1::WorkerGateway::Service {
 public:
  WorkerGatewayService(Coordinator* core, rpc::TokenTable tokens = {})
      : core_(core), tokens_(std::move(tokens)) {}

  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest*,
                        v1::RegisterResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*,
                         v1::HeartbeatResponse*) override;
  grpc::Status ReportEvents(grpc::ServerContext*, const v1::ReportEventsRequest*,
                            v1::ReportEventsResponse*) override;
  grpc::Status UploadArtifact(grpc::ServerContext*, grpc::ServerReader<v1::ArtifactChunk>*,
                              v1::UploadArtifactResponse*) override;
  grpc::Status FetchArtifact(grpc::ServerContext*, const v1::FetchArtifactRequest*,
                             grpc::ServerWriter<v1::ArtifactChunk>*) override;
  grpc::Status CompleteRun(grpc::ServerContext*, const v1::CompleteRunRequest*, v1::Ack*) override;
  grpc::Status FailRun(grpc::ServerContext*, const v1::FailRunRequest*, v1::Ack*) override;

 private:
  Coordinator* const core_;
  const rpc::TokenTable tokens_;
};

}  // namespace mal::server

#endif  // MAL_SERVER_SERVICE_SERVICES_H_
