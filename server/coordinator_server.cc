#include "server/coordinator_server.h"

#include <fcntl.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/spec/spec_paths.h"
#include "common/util/files.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"
#include "server/core/coordinator.h"
#include "server/service/metrics.h"
#include "server/service/prometheus_text.h"
#include "server/service/services.h"

namespace mal::server {

struct CoordinatorServer::Parts {
  int lock_fd = -1;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<EventHub> hub;
  std::unique_ptr<ArtifactStore> artifacts;
  std::unique_ptr<Coordinator> core;
  std::unique_ptr<RpcMetrics> rpc_metrics;
  std::unique_ptr<MetricsEndpoint> metrics;
  std::unique_ptr<CoordinatorService> client_service;
  std::unique_ptr<WorkerGatewayService> worker_service;
  std::unique_ptr<ModelRegistry> registry;
  std::unique_ptr<ModelRegistryService> registry_service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<grpc::Server> health;  // --health-listen: grpc.health.v1 only, plaintext
  int port = 0, health_port = 0;
  std::thread ticker;
  std::atomic<bool> stopping{false};
  bool shut_down = false;

  ~Parts() {
    if (lock_fd >= 0) ::close(lock_fd);
  }
};

namespace {

// One coordinator per data directory: the state store assumes a single writer. The lock file
// holds the holder's pid, for the message to the next one.
absl::StatusOr<int> LockDataDir(const std::string& dir) {
  const std::string lock_path = dir + "/coordinator.lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (fd >= 0) ::close(fd);
    const std::string holder = ReadFile(lock_path).value_or("");
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": another mal-coordinator is using this data directory",
                     holder.empty() ? "" : absl::StrCat(" (pid ", holder, ")")));
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd, 0) != 0 || ::write(fd, pid.data(), pid.size()) < 0) {
    LOG(WARNING) << lock_path << ": could not record the pid";
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(Options o) {
  if (o.data_dir.empty()) return absl::InvalidArgumentError("--data-dir is required");
  if (o.heartbeat_ms < 10 || o.lease_ms < 2 * o.heartbeat_ms || o.watch_queue < 1) {
    return absl::InvalidArgumentError(
        "--heartbeat-ms must be >= 10, --lease-ms at least twice that, --watch-queue >= 1");
  }
  auto p = std::make_unique<Parts>();
  // Absolute, so the artifact paths it reports mean the same from any directory.
  o.data_dir = std::filesystem::absolute(o.data_dir).lexically_normal().string();
  std::error_code ec;
  std::filesystem::create_directories(o.data_dir + "/artifacts", ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(o.data_dir, ": ", ec.message()));
  ASSIGN_OR_RETURN(p->lock_fd, LockDataDir(o.data_dir));
  const std::string state_db = o.data_dir + "/state.db";
  std::error_code size_ec;
  const auto db_size = std::filesystem::file_size(state_db, size_ec);
  ASSIGN_OR_RETURN(p->store, StateStore::Open(state_db));
  // Artifacts of experiments the database never had: state.db was lost, emptied, or replaced by
  // a new or older one. Starting would number experiments from where it stands and serve the old
  // runs' files (logs, models) as the new ones'.
  {
    ASSIGN_OR_RETURN(const int64_t known, p->store->ExperimentCount());
    int64_t newest = 0;
    for (const auto& entry : std::filesystem::directory_iterator(o.data_dir + "/artifacts", ec)) {
      const std::string name = entry.path().filename().string();
      int64_t n = 0;
      if (absl::StartsWith(name, "exp-") && absl::SimpleAtoi(name.substr(4), &n))
        newest = std::max(newest, n);
    }
    if (newest > known) {
      return absl::FailedPreconditionError(absl::StrCat(
          state_db, " is ",
          size_ec ? "missing"
          : db_size == 0
              ? "empty"
              : absl::StrCat("behind the artifacts (it knows ", known, " experiment(s))"),
          " but ", o.data_dir, "/artifacts holds exp-", newest,
          ": restore the state.db that goes with them, or move artifacts/ away to start afresh"));
    }
  }
  p->hub = std::make_unique<EventHub>(p->store.get(), static_cast<size_t>(o.watch_queue));
  p->artifacts = std::make_unique<ArtifactStore>(
      o.data_dir + "/artifacts", ArtifactStore::Limits{o.max_upload_bytes, o.min_free_bytes});
  if (const int removed = p->artifacts->RemovePartialUploads(); removed > 0) {
    LOG(INFO) << "removed " << removed << " partial upload(s) a crash left behind";
  }
  CoordinatorOptions co;
  co.lease_ms = o.lease_ms;
  co.heartbeat_ms = o.heartbeat_ms;
  ASSIGN_OR_RETURN(co.data_roots, NormalizeDataRoots(o.data_roots, /*resolve_links=*/false));
  ASSIGN_OR_RETURN(p->core, Coordinator::Create(p->store.get(), p->hub.get(), p->artifacts.get(),
                                                SystemClock(), co));
  if (!o.metrics_listen.empty()) {
    Coordinator* core = p->core.get();
    EventHub* hub = p->hub.get();
    p->rpc_metrics = std::make_unique<RpcMetrics>();
    ASSIGN_OR_RETURN(p->metrics, MetricsEndpoint::Start(o.metrics_listen));
    p->metrics->Register(std::make_shared<FunctionCollectable>(
        [core, hub] { return CoordinatorFamilies(core->Counters(), hub->stats()); }));
    p->metrics->Register(p->rpc_metrics->registry());
  }
  ASSIGN_OR_RETURN(auto credentials, rpc::MakeServerCredentials(o.listen, o.security));
  ASSIGN_OR_RETURN(rpc::TokenTable tokens, rpc::LoadTokens(o.security.token_file));
  p->client_service = std::make_unique<CoordinatorService>(p->core.get(), p->hub.get(), tokens,
                                                           o.submit_per_minute);
  p->worker_service = std::make_unique<WorkerGatewayService>(p->core.get(), tokens);
  p->registry = std::make_unique<ModelRegistry>(p->store.get(), o.data_dir + "/artifacts");
  p->registry_service = std::make_unique<ModelRegistryService>(p->registry.get(), tokens);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(o.listen, credentials, &p->port);
  rpc::ConfigureServer(builder);
  if (p->rpc_metrics) p->rpc_metrics->Instrument(builder);
  builder.RegisterService(p->client_service.get());
  builder.RegisterService(p->worker_service.get());
  builder.RegisterService(p->registry_service.get());
  p->server = builder.BuildAndStart();
  if (p->server == nullptr || p->port == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.listen));
  if (!o.health_listen.empty()) {
    // For probes that cannot speak TLS (Kubernetes' grpc probe): health only, no mal service.
    grpc::ServerBuilder health;
    health.AddListeningPort(o.health_listen, grpc::InsecureServerCredentials(), &p->health_port);
    p->health = health.BuildAndStart();
    if (p->health == nullptr || p->health_port == 0)
      return absl::UnavailableError(
          absl::StrCat("--health-listen: cannot listen on ", o.health_listen));
    p->health->GetHealthCheckService()->SetServingStatus(true);
  }
  p->server->GetHealthCheckService()->SetServingStatus(true);
  LOG(INFO) << "listening on " << o.listen << " (port " << p->port << "), data in " << o.data_dir;
  // The lease clock: silent workers lose their runs.
  Parts* raw = p.get();
  const auto tick = std::chrono::milliseconds(TickPeriodMs(co));
  p->ticker = std::thread([raw, tick] {
    while (!raw->stopping) {
      std::this_thread::sleep_for(tick);
      raw->core->Tick();
    }
  });
  return std::unique_ptr<CoordinatorServer>(new CoordinatorServer(std::move(p)));
}

CoordinatorServer::CoordinatorServer(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

int CoordinatorServer::port() const { return parts_->port; }

int CoordinatorServer::health_port() const { return parts_->health_port; }

int CoordinatorServer::metrics_port() const {
  return parts_->metrics ? parts_->metrics->port() : 0;
}

void CoordinatorServer::Shutdown(std::chrono::milliseconds grace) {
  if (parts_->shut_down) return;
  parts_->shut_down = true;
  LOG(INFO) << "shutting down";
  // NOT_SERVING first, so probes see the stop at once.
  parts_->server->GetHealthCheckService()->SetServingStatus(false);
  if (parts_->health) parts_->health->GetHealthCheckService()->SetServingStatus(false);
  parts_->stopping = true;
  if (parts_->ticker.joinable()) parts_->ticker.join();
  parts_->client_service->Shutdown();
  parts_->core->Shutdown();
  parts_->server->Shutdown(std::chrono::system_clock::now() + grace);
  parts_->server->Wait();
  if (parts_->health) {
    parts_->health->Shutdown(std::chrono::system_clock::now());
    parts_->health->Wait();
  }
  parts_->metrics.reset();
}

}  // namespace mal::server
