// mal-coordinator: owns the state, schedules fold runs onto worker daemons, streams events.
//   mal-coordinator --listen HOST:PORT --data-dir DIR [--lease-ms 15000] [--heartbeat-ms 1000]
//                   [--watch-queue 1024] [--metrics-listen HOST:PORT]
//                   [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--token-file FILE]
//                   [--insecure]
// DIR holds state.db (SQLite) and artifacts/. SIGINT/SIGTERM: report NOT_SERVING, end watch
// streams, stop the server (in-flight calls get a few seconds), close the store.

#include <fcntl.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <sys/file.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <thread>

#include "absl/synchronization/notification.h"
#include "common/util/args.h"
#include "common/util/files.h"
#include "common/util/grpc_channel.h"
#include "common/util/logging.h"
#include "server/core/coordinator.h"
#include "server/service/metrics_http.h"
#include "server/service/prometheus_text.h"
#include "server/service/services.h"

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const std::string& message) {
  std::cerr << "mal-coordinator: " << message << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  mal::InitLogging(argv[0]);
  auto args = mal::cli::Args::Parse(
      std::vector<std::string>(argv + 1, argv + argc),
      {"listen", "data-dir", "lease-ms", "heartbeat-ms", "watch-queue", "metrics-listen",
       "tls-cert", "tls-key", "tls-client-ca", "token-file"},
      {"help", "insecure"});
  if (!args.ok()) return Fail(std::string(args.status().message()));
  if (args->Flag("help") || !args->Has("data-dir")) {
    std::cerr << "usage: mal-coordinator --listen HOST:PORT --data-dir DIR [--lease-ms 15000] "
                 "[--heartbeat-ms 1000] [--watch-queue 1024] [--metrics-listen HOST:PORT]\n"
                 "       [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--token-file FILE] "
                 "[--insecure]\n";
    return args->Flag("help") ? 0 : 2;
  }
  const std::string listen = args->Get("listen", "127.0.0.1:7070");
  // Absolute, so the artifact paths it reports mean the same from any directory.
  const std::string dir =
      std::filesystem::absolute(args->Get("data-dir")).lexically_normal().string();
  auto lease = args->GetInt("lease-ms", 15000);
  auto heartbeat = args->GetInt("heartbeat-ms", 1000);
  auto queue = args->GetInt("watch-queue", 1024);
  if (!lease.ok() || !heartbeat.ok() || !queue.ok()) {
    return Fail(std::string((!lease.ok()       ? lease.status()
                             : !heartbeat.ok() ? heartbeat.status()
                                               : queue.status())
                                .message()));
  }
  if (*heartbeat < 10 || *lease < 2 * *heartbeat || *queue < 1) {
    return Fail("--heartbeat-ms must be >= 10, --lease-ms at least twice that, --watch-queue >= 1");
  }
  std::error_code ec;
  std::filesystem::create_directories(dir + "/artifacts", ec);
  if (ec) return Fail(dir + ": " + ec.message());

  // One coordinator per data directory: the state store assumes a single writer.
  const std::string lock_path = dir + "/coordinator.lock";
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0 || ::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    const std::string holder = mal::ReadFile(lock_path).value_or("");
    return Fail(dir + ": another mal-coordinator is using this data directory" +
                (holder.empty() ? "" : " (pid " + holder + ")"));
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(lock_fd, 0) != 0 || ::write(lock_fd, pid.data(), pid.size()) < 0) {
    LOG(WARNING) << lock_path << ": could not record the pid";
  }

  auto store = mal::server::StateStore::Open(dir + "/state.db");
  if (!store.ok()) return Fail(std::string(store.status().message()));
  mal::server::EventHub hub(store->get(), static_cast<size_t>(*queue));
  mal::server::ArtifactStore artifacts(dir + "/artifacts");
  if (const int removed = artifacts.RemovePartialUploads(); removed > 0) {
    LOG(INFO) << "removed " << removed << " partial upload(s) a crash left behind";
  }
  mal::server::CoordinatorOptions options;
  options.lease_ms = *lease;
  options.heartbeat_ms = *heartbeat;
  auto core = mal::server::Coordinator::Create(store->get(), &hub, &artifacts,
                                               mal::server::SystemClock(), options);
  if (!core.ok()) return Fail(std::string(core.status().message()));

  // Prometheus metrics on their own port.
  std::unique_ptr<mal::server::MetricsHttpServer> metrics;
  if (args->Has("metrics-listen")) {
    mal::server::Coordinator* c = core->get();
    auto started = mal::server::MetricsHttpServer::Start(args->Get("metrics-listen"), [c, &hub] {
      return mal::server::PrometheusText(c->Counters(), hub.stats());
    });
    if (!started.ok()) return Fail(std::string(started.status().message()));
    metrics = std::move(*started);
    std::cout << "mal-coordinator metrics on port " << metrics->port() << std::endl;
  }

  mal::rpc::ServerSecurity security;
  security.cert_file = args->Get("tls-cert");
  security.key_file = args->Get("tls-key");
  security.client_ca_file = args->Get("tls-client-ca");
  security.token_file = args->Get("token-file");
  security.insecure = args->Flag("insecure");
  auto credentials = mal::rpc::MakeServerCredentials(listen, security);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  auto tokens = mal::rpc::LoadTokens(security.token_file);
  if (!tokens.ok()) return Fail(std::string(tokens.status().message()));

  mal::server::CoordinatorService client_service(core->get(), &hub, *tokens);
  mal::server::WorkerGatewayService worker_service(core->get(), *tokens);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, *credentials, &port);
  mal::rpc::ConfigureServer(builder);
  builder.RegisterService(&client_service);
  builder.RegisterService(&worker_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return Fail("cannot listen on " + listen);
  server->GetHealthCheckService()->SetServingStatus(true);
  // The port actually bound (":0" picks a free one), for scripts and tests.
  std::cout << "mal-coordinator listening on port " << port << std::endl;
  LOG(INFO) << "listening on " << listen << " (port " << port << "), data in " << dir;

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);
  const auto tick = std::chrono::milliseconds(std::max<int64_t>(50, *heartbeat / 2));
  while (!g_stop) {
    std::this_thread::sleep_for(tick);
    (*core)->Tick();
  }
  LOG(INFO) << "shutting down";
  server->GetHealthCheckService()->SetServingStatus(false);
  client_service.Shutdown();
  (*core)->Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  return 0;
}
