#ifndef MAL_SERVER_COORDINATOR_SERVER_H_
#define MAL_SERVER_COORDINATOR_SERVER_H_

// The whole coordinator as one object, built from its Options: the data directory (locked, one
// coordinator per directory), the state store, event hub, artifact store, the core, the gRPC
// services with health and reflection, the optional Prometheus port and the lease clock. The
// mal-coordinator binary parses flags into Options and runs one; tests start one in-process on
// 127.0.0.1:0.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/util/grpc_channel.h"

namespace mal::server {

class CoordinatorServer {
 public:
  struct Options {
    std::string listen = "127.0.0.1:7070";  // HOST:PORT; port 0 picks a free one (port())
    std::string data_dir;                   // state.db, artifacts/, coordinator.lock
    int64_t lease_ms = 15000;               // a worker silent this long loses its runs
    int64_t heartbeat_ms = 1000;            // how often workers call; >= 10, lease >= 2x
    int64_t watch_queue = 1024;             // events per watcher before coalescing, >= 1
    std::string metrics_listen;             // Prometheus text on its own port; empty: none
    // grpc.health.v1 alone, plaintext, on its own port (probes that cannot do TLS); empty: none.
    std::string health_listen;
    rpc::ServerSecurity security;  // TLS and bearer tokens (common/util/grpc_channel.h)
    int64_t max_upload_bytes = int64_t{16} << 30;  // one artifact from a worker
    int64_t min_free_bytes = int64_t{512} << 20;   // uploads refused below this much free disk
    // Absolute directories every dataset and weight path of a spec must lie under (checked
    // lexically at submit, common/spec/spec_paths.h); empty: no containment.
    std::vector<std::string> data_roots;
    // Submissions per client (peer address, or the token when tokens are set) within a minute;
    // 0: no limit. Past it, RESOURCE_EXHAUSTED with the seconds to wait.
    int submit_per_minute = 0;
  };

  // Opens (creating) the data directory, recovers the state, binds and starts serving; the lease
  // clock ticks on its own thread. Errors: InvalidArgument for inconsistent options,
  // FailedPrecondition when another coordinator holds the directory (naming its pid), the
  // store's errors (DataLoss for a damaged database), Unavailable when it cannot listen.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(Options options);
  ~CoordinatorServer();  // Shutdown(), then releases the directory
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  int port() const;          // the gRPC port bound
  int metrics_port() const;  // 0 without metrics_listen
  int health_port() const;   // 0 without health_listen
  // Graceful stop: health NOT_SERVING, open watches end (UNAVAILABLE with the seq to resume
  // from), pending waits return, in-flight calls get up to `grace` to finish. Idempotent.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  struct Parts;
  explicit CoordinatorServer(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

}  // namespace mal::server

#endif  // MAL_SERVER_COORDINATOR_SERVER_H_
