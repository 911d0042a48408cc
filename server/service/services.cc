#include "server/service/services.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/util/artifact_transfer.h"
#include "common/util/grpc_channel.h"
#include "common/util/grpc_status.h"
#include "common/util/run_files.h"
#include "common/util/sha256.h"
#include "server/events/watch_session.h"

namespace mal::server {

namespace {

template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status CoordinatorService::SubmitExperiment(grpc::ServerContext* context,
                                                  const v1::SubmitExperimentRequest* request,
                                                  v1::SubmitExperimentResponse* response) {
  int token_line = 0;
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser, &token_line);
      !denied.ok())
    return denied;
  // One client: its token when tokens are set, else its address without the port.
  std::string client =
      token_line > 0 ? absl::StrCat("token on line ", token_line) : context->peer();
  if (token_line == 0 && client.find(':') != std::string::npos) client.resize(client.rfind(':'));
  // A retry under a known request id creates nothing, and its answer may have been lost: it is
  // never limited.
  // (Looked up only when a limit is set: the store is not read for every submission.)
  if (const int64_t wait_ms = submit_limit_ <= 0 || core_->KnownRequestId(request->request_id())
                                  ? 0
                                  : submits_.Acquire(client, absl::ToUnixMillis(absl::Now()));
      wait_ms > 0) {
    return grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("more than ", submit_limit_, " submission(s) in a minute from ", client,
                     " (--submit-per-minute); retry in ", (wait_ms + 999) / 1000, " s"));
  }
  return Reply(core_->Submit(*request), response);
}

grpc::Status CoordinatorService::GetExperiment(grpc::ServerContext* context,
                                               const v1::GetExperimentRequest* request,
                                               v1::ExperimentInfo* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(core_->Get(request->experiment_id()), response);
}

grpc::Status CoordinatorService::ListExperiments(grpc::ServerContext* context,
                                                 const v1::ListExperimentsRequest* request,
                                                 v1::ListExperimentsResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(core_->List(*request), response);
}

grpc::Status CoordinatorService::CancelExperiment(grpc::ServerContext* context,
                                                  const v1::CancelExperimentRequest* request,
                                                  v1::ExperimentInfo* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(core_->Cancel(request->experiment_id()), response);
}

grpc::Status CoordinatorService::DeleteExperiment(grpc::ServerContext* context,
                                                  const v1::DeleteExperimentRequest* request,
                                                  v1::DeleteExperimentResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kAdmin); !denied.ok())
    return denied;
  return Reply(core_->Delete(request->experiment_id()), response);
}

grpc::Status CoordinatorService::WaitExperiment(grpc::ServerContext* context,
                                                const v1::WaitExperimentRequest* request,
                                                v1::ExperimentInfo* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  int64_t ms = request->timeout_ms() <= 0 ? 30000 : std::min<int64_t>(request->timeout_ms(), 60000);
  // Never past the caller's own deadline.
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      context->deadline() - std::chrono::system_clock::now());
  if (left.count() > 0) ms = std::min<int64_t>(ms, std::max<int64_t>(left.count() - 200, 0));
  return Reply(core_->Wait(request->experiment_id(), absl::Milliseconds(ms)), response);
}

grpc::Status CoordinatorService::Watch(grpc::ServerContext* context,
                                       const v1::WatchRequest* request,
                                       grpc::ServerWriter<v1::WatchResponse>* writer) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  const std::string id = request->experiment_id();
  auto session = WatchSession::Start(
      hub_, [this, id]() { return core_->State(id); }, *request);
  if (!session.ok()) return ToGrpcStatus(session.status());
  while (!context->IsCancelled()) {
    auto step = (*session)->Next(shutting_down_);
    if (!step.ok()) return ToGrpcStatus(step.status());
    for (const v1::WatchResponse& r : step->send) {
      if (!writer->Write(r)) return grpc::Status::CANCELLED;
    }
    if (step->done) return grpc::Status::OK;
  }
  return grpc::Status::CANCELLED;
}

grpc::Status CoordinatorService::GetResults(grpc::ServerContext* context,
                                            const v1::ResultsRequest* request,
                                            v1::ResultsResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(core_->Results(request->experiment_id()), response);
}

grpc::Status CoordinatorService::ListWorkers(grpc::ServerContext* context,
                                             const v1::ListWorkersRequest*,
                                             v1::ListWorkersResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  *response = core_->Workers();
  return grpc::Status::OK;
}

grpc::Status CoordinatorService::ListArtifacts(grpc::ServerContext* context,
                                               const v1::ArtifactRequest* request,
                                               v1::ListArtifactsResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(core_->ListArtifacts(*request), response);
}

grpc::Status CoordinatorService::DownloadArtifact(grpc::ServerContext* context,
                                                  const v1::ArtifactRequest* request,
                                                  grpc::ServerWriter<v1::ArtifactChunk>* writer) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  auto path = core_->RunArtifactPath(*request);
  if (!path.ok()) return ToGrpcStatus(path.status());
  return rpc::SendFile(*context, *writer, *path, request->name());
}

grpc::Status ModelRegistryService::ListRegisteredModels(
    grpc::ServerContext* context, const v1::ListRegisteredModelsRequest* request,
    v1::ListRegisteredModelsResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(registry_->List(request->name()), response);
}

grpc::Status ModelRegistryService::GetModel(grpc::ServerContext* context,
                                            const v1::GetModelRequest* request,
                                            v1::ModelInfo* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(registry_->Get(request->model()), response);
}

grpc::Status ModelRegistryService::SetModelAlias(grpc::ServerContext* context,
                                                 const v1::SetModelAliasRequest* request,
                                                 v1::ModelInfo* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(registry_->SetAlias(request->model(), request->alias()), response);
}

grpc::Status ModelRegistryService::DeleteModelAlias(grpc::ServerContext* context,
                                                    const v1::DeleteModelAliasRequest* request,
                                                    v1::ModelInfo* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  return Reply(registry_->DeleteAlias(request->name(), request->alias()), response);
}

grpc::Status ModelRegistryService::DeleteModel(grpc::ServerContext* context,
                                               const v1::DeleteModelRequest* request,
                                               v1::ModelInfo* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kAdmin); !denied.ok())
    return denied;
  return Reply(registry_->Delete(request->model()), response);
}

grpc::Status ModelRegistryService::DownloadModel(grpc::ServerContext* context,
                                                 const v1::DownloadModelRequest* request,
                                                 grpc::ServerWriter<v1::ArtifactChunk>* writer) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kUser); !denied.ok())
    return denied;
  auto file = registry_->ModelFile(request->model());
  if (!file.ok()) return ToGrpcStatus(file.status());
  return rpc::SendFile(*context, *writer, file->first, run_files::kModel);
}

namespace {

Coordinator::WorkerCaller Caller(const grpc::ServerContext& context) {
  Coordinator::WorkerCaller caller;
  const auto& md = context.client_metadata();
  if (auto it = md.find("mal-worker"); it != md.end())
    caller.name.assign(it->second.data(), it->second.size());
  if (auto it = md.find("mal-worker-session"); it != md.end())
    caller.session.assign(it->second.data(), it->second.size());
  return caller;
}

}  // namespace

grpc::Status WorkerGatewayService::Register(grpc::ServerContext* context,
                                            const v1::RegisterRequest* request,
                                            v1::RegisterResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kWorker); !denied.ok())
    return denied;
  return Reply(core_->Register(*request), response);
}

grpc::Status WorkerGatewayService::Heartbeat(grpc::ServerContext* context,
                                             const v1::HeartbeatRequest* request,
                                             v1::HeartbeatResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kWorker); !denied.ok())
    return denied;
  const Coordinator::WorkerCaller caller = Caller(*context);
  if (caller.name != request->name()) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "heartbeat: name differs from the caller's mal-worker metadata");
  }
  if (absl::Status s = core_->Authenticate(caller, 0, /*allow_unknown=*/true); !s.ok())
    return ToGrpcStatus(s);
  return Reply(core_->Heartbeat(*request), response);
}

grpc::Status WorkerGatewayService::ReportEvents(grpc::ServerContext* context,
                                                const v1::ReportEventsRequest* request,
                                                v1::ReportEventsResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kWorker); !denied.ok())
    return denied;
  if (absl::Status s = core_->Authenticate(Caller(*context), request->run_id()); !s.ok())
    return ToGrpcStatus(s);
  return Reply(core_->ReportEvents(*request), response);
}

grpc::Status WorkerGatewayService::UploadArtifact(grpc::ServerContext* context,
                                                  grpc::ServerReader<v1::ArtifactChunk>* reader,
                                                  v1::UploadArtifactResponse* response) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kWorker); !denied.ok())
    return denied;
  v1::ArtifactChunk chunk;
  if (!reader->Read(&chunk))
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "upload: no chunks");
  const int64_t run_id = chunk.run_id(), epoch = chunk.lease_epoch();
  const std::string name = chunk.name();
  if (absl::Status s = core_->Authenticate(Caller(*context), run_id); !s.ok())
    return ToGrpcStatus(s);
  auto upload = core_->BeginUpload(run_id, epoch, name);
  if (!upload.ok()) return ToGrpcStatus(upload.status());
  std::string sha256;
  do {
    if (absl::Status s = (*upload)->Append(chunk.data()); !s.ok()) {
      core_->UploadRefused(run_id, epoch, name, s);
      return ToGrpcStatus(s);
    }
    if (!chunk.sha256().empty()) sha256 = chunk.sha256();
  } while (reader->Read(&chunk));
  if (sha256.empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("upload ", name, ": no checksum"));
  }
  auto size = core_->FinishUpload(run_id, epoch, name, **upload, sha256);
  if (!size.ok()) return ToGrpcStatus(size.status());
  response->set_size(*size);
  response->set_sha256(sha256);
  return grpc::Status::OK;
}

grpc::Status WorkerGatewayService::FetchArtifact(grpc::ServerContext* context,
                                                 const v1::FetchArtifactRequest* request,
                                                 grpc::ServerWriter<v1::ArtifactChunk>* writer) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kWorker); !denied.ok())
    return denied;
  if (absl::Status s = core_->Authenticate(Caller(*context), request->run_id()); !s.ok())
    return ToGrpcStatus(s);
  auto path = core_->ArtifactPath(request->run_id(), request->name());
  if (!path.ok()) return ToGrpcStatus(path.status());
  return rpc::SendFile(*context, *writer, *path, request->name());
}

grpc::Status WorkerGatewayService::CompleteRun(grpc::ServerContext* context,
                                               const v1::CompleteRunRequest* request, v1::Ack*) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kWorker); !denied.ok())
    return denied;
  if (absl::Status s = core_->Authenticate(Caller(*context), request->run_id(),
                                           /*allow_unknown=*/false, /*completion=*/true);
      !s.ok())
    return ToGrpcStatus(s);
  return ToGrpcStatus(core_->Complete(*request));
}

grpc::Status WorkerGatewayService::FailRun(grpc::ServerContext* context,
                                           const v1::FailRunRequest* request, v1::Ack*) {
  if (grpc::Status denied = rpc::CheckToken(*context, tokens_, rpc::Role::kWorker); !denied.ok())
    return denied;
  if (absl::Status s = core_->Authenticate(Caller(*context), request->run_id()); !s.ok())
    return ToGrpcStatus(s);
  return ToGrpcStatus(core_->Fail(*request));
}

}  // namespace mal::server
