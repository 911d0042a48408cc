#ifndef MAL_WORKER_DAEMON_COORDINATOR_CLIENT_H_
#define MAL_WORKER_DAEMON_COORDINATOR_CLIENT_H_

// The worker daemon's view of the coordinator's WorkerGateway (service.proto): one call each, no
// retries (the daemon decides with IsTransient, common/util/grpc_status.h). An interface so the
// daemon runs against a fake in unit tests; MakeGrpcCoordinatorClient is the real one.
// Implementations are called from several threads at once (the daemon's loop, one per run).

#include <grpcpp/channel.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <memory>
#include <string>

#include "mal/v1/service.pb.h"

namespace mal::worker {

class CoordinatorClient {
 public:
  virtual ~CoordinatorClient() = default;
  // `timeout` bounds each call.
  virtual grpc::Status Register(const v1::RegisterRequest& request, v1::RegisterResponse* response,
                                std::chrono::milliseconds timeout) = 0;
  virtual grpc::Status Heartbeat(const v1::HeartbeatRequest& request,
                                 v1::HeartbeatResponse* response,
                                 std::chrono::milliseconds timeout) = 0;
  virtual grpc::Status ReportEvents(const v1::ReportEventsRequest& request,
                                    v1::ReportEventsResponse* response,
                                    std::chrono::milliseconds timeout) = 0;
  virtual grpc::Status CompleteRun(const v1::CompleteRunRequest& request,
                                   std::chrono::milliseconds timeout) = 0;
  virtual grpc::Status FailRun(const v1::FailRunRequest& request,
                               std::chrono::milliseconds timeout) = 0;
  // Streams the file at `path` as artifact `name` of the run held under (run_id, lease_epoch),
  // with its SHA-256. NOT_FOUND when `path` cannot be opened.
  virtual grpc::Status Upload(int64_t run_id, int64_t lease_epoch, const std::string& name,
                              const std::string& path, std::chrono::milliseconds timeout) = 0;
  // Downloads artifact `name` of the run to `path` (through `path`.fetch, renamed once its SHA-256
  // matches; DATA_LOSS otherwise, and nothing is left at `path`).
  virtual grpc::Status Fetch(int64_t run_id, const std::string& name, const std::string& path,
                             std::chrono::milliseconds timeout) = 0;
};

std::unique_ptr<CoordinatorClient> MakeGrpcCoordinatorClient(
    std::shared_ptr<grpc::Channel> channel);

}  // namespace mal::worker

#endif  // MAL_WORKER_DAEMON_COORDINATOR_CLIENT_H_
