#ifndef MAL_SERVER_SERVE_SERVE_SERVER_H_
#define MAL_SERVER_SERVE_SERVE_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/util/grpc_channel.h"
#include "server/serve/au_detection.h"
#include "server/serve/dynamic_batcher.h"
#include "server/serve/registry_cache.h"

namespace mal::serve {

// mal-serve: the Inference service (proto/mal/v1/inference.proto) over a model directory, with
// gRPC health and reflection like the other daemons. A data plane of its own: it shares no lock
// or thread with a coordinator. Options -> Start -> Shutdown; tests start it on 127.0.0.1:0.
class ServeServer {
 public:
  struct Options {
    std::string listen = "127.0.0.1:7071";  // HOST:PORT; port 0 picks a free one (port())
    std::string model_dir;                  // DIR/NAME/{model.json,model.pt} (ModelStore)
    RegistryCache::Options registry;        // or, with registry.address, the coordinator's models
    std::string device = "cpu";             // cpu, cuda, cuda:N
    int64_t memory_budget = int64_t{2}
                            << 30;  // bytes of loaded models (least recently used dropped)
    std::string face_cascade;       // empty: opencv-data's frontal face cascade
    DetectLimits limits;
    DynamicBatcher::Options batching;  // model calls shared across concurrent requests
    rpc::ServerSecurity security;      // TLS and bearer tokens, as the coordinator's
    // Prometheus at HOST:PORT/metrics (port 0 picks one, metrics_port()): RPC latency per method,
    // faces per model call and model call time; empty: none.
    std::string metrics_listen;
  };

  // Checks the options (exactly one source: the model directory, which must exist, or a registry
  // address with a cache directory it can create; the device must be usable), loads the face
  // cascade, binds and starts serving. The registry is not called yet: a coordinator that is down
  // at start only fails the calls that need it. Errors: InvalidArgument / NotFound naming the
  // option or file, Unavailable when it cannot listen.
  static absl::StatusOr<std::unique_ptr<ServeServer>> Start(Options options);
  ~ServeServer();  // Shutdown()
  ServeServer(const ServeServer&) = delete;
  ServeServer& operator=(const ServeServer&) = delete;

  int port() const;
  int metrics_port() const;  // 0 without metrics_listen
  // Health NOT_SERVING, then in-flight calls get up to `grace` to finish. Idempotent.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  struct Parts;
  explicit ServeServer(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

}  // namespace mal::serve

#endif  // MAL_SERVER_SERVE_SERVE_SERVER_H_
