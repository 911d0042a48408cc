#include "worker/daemon/coordinator_client.h"

#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/util/artifact_transfer.h"
#include "common/util/grpc_channel.h"
#include "common/util/sha256.h"
#include "mal/v1/service.grpc.pb.h"

namespace mal::worker {

namespace {

class GrpcCoordinatorClient : public CoordinatorClient {
 public:
  explicit GrpcCoordinatorClient(std::shared_ptr<grpc::Channel> channel)
      : stub_(v1::WorkerGateway::NewStub(std::move(channel))) {}

  grpc::Status Register(const v1::RegisterRequest& request, v1::RegisterResponse* response,
                        std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    rpc::SetDeadline(ctx, timeout);
    grpc::Status s = stub_->Register(&ctx, request, response);
    if (s.ok()) {
      // The credential of every later call (proto/mal/v1/service.proto, RegisterResponse).
      absl::MutexLock lock(&mu_);
      name_ = request.name();
      session_ = response->session();
    }
    return s;
  }
  grpc::Status Heartbeat(const v1::HeartbeatRequest& request, v1::HeartbeatResponse* response,
                         std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    Prepare(ctx, timeout);
    return stub_->Heartbeat(&ctx, request, response);
  }
  grpc::Status ReportEvents(const v1::ReportEventsRequest& request,
                            v1::ReportEventsResponse* response,
                            std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    Prepare(ctx, timeout);
    return stub_->ReportEvents(&ctx, request, response);
  }
  grpc::Status CompleteRun(const v1::CompleteRunRequest& request,
                           std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    Prepare(ctx, timeout);
    v1::Ack ack;
    return stub_->CompleteRun(&ctx, request, &ack);
  }
  grpc::Status FailRun(const v1::FailRunRequest& request,
                       std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    Prepare(ctx, timeout);
    v1::Ack ack;
    return stub_->FailRun(&ctx, request, &ack);
  }

  grpc::Status Upload(int64_t run_id, int64_t lease_epoch, const std::string& name,
                      const std::string& path, std::chrono::milliseconds timeout) override {
    std::ifstream in(path, std::ios::binary);
    if (!in) return grpc::Status(grpc::StatusCode::NOT_FOUND, path + ": cannot open");
    grpc::ClientContext ctx;
    Prepare(ctx, timeout);
    v1::UploadArtifactResponse resp;
    auto writer = stub_->UploadArtifact(&ctx, &resp);
    Sha256 hash;
    std::vector<char> buf(rpc::kArtifactChunkBytes);
    v1::ArtifactChunk chunk;
    chunk.set_run_id(run_id);
    chunk.set_lease_epoch(lease_epoch);
    chunk.set_name(name);
    bool ok = true;
    while (ok &&
           (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0)) {
      chunk.set_data(buf.data(), static_cast<size_t>(in.gcount()));
      hash.Update(chunk.data());
      ok = writer->Write(chunk);
      chunk = v1::ArtifactChunk();
    }
    if (ok) {
      chunk.set_sha256(hash.HexDigest());
      ok = writer->Write(chunk);
    }
    writer->WritesDone();
    return writer->Finish();
  }

  grpc::Status Fetch(int64_t run_id, const std::string& name, const std::string& path,
                     std::chrono::milliseconds timeout) override {
    grpc::ClientContext ctx;
    Prepare(ctx, timeout);
    v1::FetchArtifactRequest req;
    req.set_run_id(run_id);
    req.set_name(name);
    auto reader = stub_->FetchArtifact(&ctx, req);
    return rpc::ReceiveFile(*reader, path);
  }

 private:
  // Deadline and the worker's credential (none before the first Register).
  void Prepare(grpc::ClientContext& ctx, std::chrono::milliseconds timeout) {
    rpc::SetDeadline(ctx, timeout);
    absl::MutexLock lock(&mu_);
    if (!name_.empty()) {
      ctx.AddMetadata("mal-worker", name_);
      ctx.AddMetadata("mal-worker-session", session_);
    }
  }

  std::unique_ptr<v1::WorkerGateway::Stub> stub_;
  absl::Mutex mu_;
  std::string name_ ABSL_GUARDED_BY(mu_), session_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<CoordinatorClient> MakeGrpcCoordinatorClient(
    std::shared_ptr<grpc::Channel> channel) {
  return std::make_unique<GrpcCoordinatorClient>(std::move(channel));
}

}  // namespace mal::worker
