// mal-coordinator: owns the state, schedules fold runs onto worker daemons, streams events.
//   mal-coordinator --data-dir DIR [--listen HOST:PORT] [--lease-ms 15000] [--heartbeat-ms 1000]
//                   [--watch-queue 1024] [--metrics-listen HOST:PORT]
//                   [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--token-file FILE]
//                   [--insecure] [--data-root DIR ...] [--submit-per-minute N]
//                   [--health-listen HOST:PORT]
// DIR holds state.db (SQLite) and artifacts/. SIGINT/SIGTERM: report NOT_SERVING, end watch
// streams, stop the server (in-flight calls get a few seconds), close the store. The flags fill
// CoordinatorServer::Options (server/coordinator_server.h), which does the rest.

#include <CLI/CLI.hpp>
#include <csignal>
#include <iostream>
#include <string>
#include <vector>

#include "common/util/cli.h"
#include "common/util/logging.h"
#include "common/util/server_cli.h"
#include "common/util/systemd_notify.h"
#include "server/coordinator_server.h"

int main(int argc, char** argv) {
  mal::InitLogging(argv[0]);
  // A write past `ulimit -f` fails with EFBIG, an error naming the file, instead of SIGXFSZ
  // killing the process without a word (a coordinator under a limit crash-looped so).
  std::signal(SIGXFSZ, SIG_IGN);
  mal::server::CoordinatorServer::Options o;
  CLI::App app(
      "mal-coordinator: owns the experiments' state, schedules fold runs onto worker daemons and "
      "streams their events to clients.",
      "mal-coordinator");
  app.option_defaults()->always_capture_default();
  app.add_option("--listen", o.listen, "HOST:PORT to serve on (port 0: a free one, printed)");
  app.add_option("--data-dir", o.data_dir, "state.db (SQLite), artifacts/ and the lock")
      ->required();
  app.add_option("--lease-ms", o.lease_ms, "a worker silent this long loses its runs, ms")
      ->check(CLI::Range(int64_t{20}, int64_t{86400000}));
  app.add_option("--heartbeat-ms", o.heartbeat_ms, "how often workers call, ms (lease >= 2x)")
      ->check(CLI::Range(int64_t{10}, int64_t{3600000}));
  app.add_option("--watch-queue", o.watch_queue, "events queued per watcher before coalescing")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app.add_option("--metrics-listen", o.metrics_listen,
                 "serve Prometheus text at HOST:PORT (default: none)");
  int64_t max_upload_mb = o.max_upload_bytes >> 20, min_free_mb = o.min_free_bytes >> 20;
  app.add_option("--max-upload-mb", max_upload_mb, "largest artifact a worker may upload, MiB")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app.add_option("--min-free-mb", min_free_mb,
                 "uploads are refused when the data directory's disk has less free, MiB")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  app.add_option("--health-listen", o.health_listen,
                 "also serve grpc.health.v1 alone, plaintext, at HOST:PORT (for probes that "
                 "cannot do TLS, e.g. Kubernetes' grpc probe; default: none)");
  app.add_option("--data-root", o.data_roots,
                 "absolute directory every dataset and weight path of a spec must lie under "
                 "(repeatable; default: no containment)");
  app.add_option("--submit-per-minute", o.submit_per_minute,
                 "submissions per client per minute (0: no limit)")
      ->check(CLI::Range(0, 1000000));
  mal::cli::AddServerSecurityOptions(app, &o.security);
  if (auto code = mal::cli::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc)))
    return *code;
  o.max_upload_bytes = max_upload_mb << 20;
  o.min_free_bytes = min_free_mb << 20;

  auto server = mal::server::CoordinatorServer::Start(o);
  if (!server.ok()) {
    std::cerr << "mal-coordinator: " << server.status().message() << "\n";
    return 2;
  }
  // The ports actually bound (":0" picks a free one), for scripts and tests.
  if ((*server)->metrics_port() > 0) {
    std::cout << "mal-coordinator metrics on port " << (*server)->metrics_port() << std::endl;
  }
  if ((*server)->health_port() > 0) {
    std::cout << "mal-coordinator health on port " << (*server)->health_port() << std::endl;
  }
  std::cout << "mal-coordinator listening on port " << (*server)->port() << std::endl;
  mal::NotifySystemd("READY=1\nSTATUS=listening on port " + std::to_string((*server)->port()));
  mal::cli::WaitForTerminationSignal();
  mal::NotifySystemd("STOPPING=1\nSTATUS=stopping: watch streams end, calls get 5 s");
  (*server)->Shutdown();
  return 0;
}
