// mal-coordinator: owns the state, schedules fold runs onto worker daemons, streams events.
//   mal-coordinator --listen HOST:PORT --data-dir DIR [--lease-ms 15000] [--heartbeat-ms 1000]
//                   [--watch-queue 1024] [--metrics-listen HOST:PORT]
//                   [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--token-file FILE]
//                   [--insecure]
// DIR holds state.db (SQLite) and artifacts/. SIGINT/SIGTERM: report NOT_SERVING, end watch
// streams, stop the server (in-flight calls get a few seconds), close the store. The flags fill
// CoordinatorServer::Options (server/coordinator_server.h), which does the rest.

#include <csignal>
#include <iostream>
#include <thread>

#include "common/util/args.h"
#include "common/util/logging.h"
#include "server/coordinator_server.h"

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
  mal::server::CoordinatorServer::Options o;
  o.listen = args->Get("listen", o.listen);
  o.data_dir = args->Get("data-dir");
  o.metrics_listen = args->Get("metrics-listen");
  o.security = {args->Get("tls-cert"), args->Get("tls-key"), args->Get("tls-client-ca"),
                args->Get("token-file"), args->Flag("insecure")};
  for (auto [flag, target] :
       {std::pair{"lease-ms", &o.lease_ms}, std::pair{"heartbeat-ms", &o.heartbeat_ms},
        std::pair{"watch-queue", &o.watch_queue}}) {
    auto v = args->GetInt(flag, *target);
    if (!v.ok()) return Fail(std::string(v.status().message()));
    *target = *v;
  }
  auto server = mal::server::CoordinatorServer::Start(o);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  // The ports actually bound (":0" picks a free one), for scripts and tests.
  if ((*server)->metrics_port() > 0) {
    std::cout << "mal-coordinator metrics on port " << (*server)->metrics_port() << std::endl;
  }
  std::cout << "mal-coordinator listening on port " << (*server)->port() << std::endl;
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGPIPE, SIG_IGN);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  (*server)->Shutdown();
  return 0;
}
