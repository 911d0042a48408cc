#ifndef MAL_SERVER_SERVICE_METRICS_H_
#define MAL_SERVER_SERVICE_METRICS_H_

// Prometheus metrics with prometheus-cpp (Debian's prometheus-cpp-dev): an HTTP endpoint (its
// pull exposer, GET /metrics), per-method RPC latency histograms filled by a gRPC server
// interceptor, and collectables that build typed families at scrape time from counts the daemons
// keep anyway (the coordinator's, server/service/prometheus_text.h).

#include <grpcpp/server_builder.h>
#include <grpcpp/support/server_interceptor.h>
#include <prometheus/collectable.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
}

namespace mal::server {

// GET http://HOST:PORT/metrics in the text exposition format 0.0.4 (prometheus-cpp's exposer).
class MetricsEndpoint {
 public:
  // Listens on HOST:PORT (port 0 picks one, see port()). UNAVAILABLE naming the address when it
  // cannot listen; INVALID_ARGUMENT without a port.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& listen);
  ~MetricsEndpoint();
  // Serves `collectable` (kept alive by the endpoint) at every scrape.
  void Register(std::shared_ptr<prometheus::Collectable> collectable);
  int port() const { return port_; }

 private:
  MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer, int port);
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
};

// Families built at each scrape by `collect`.
class FunctionCollectable : public prometheus::Collectable {
 public:
  explicit FunctionCollectable(std::function<std::vector<prometheus::MetricFamily>()> collect)
      : collect_(std::move(collect)) {}
  std::vector<prometheus::MetricFamily> Collect() const override { return collect_(); }

 private:
  std::function<std::vector<prometheus::MetricFamily>()> collect_;
};

// mal_rpc_duration_seconds{method, code}: a histogram of the time from a call's arrival to its
// status (seconds; buckets 0.5 ms .. 60 s), per gRPC method ("/mal.v1.Coordinator/Submit...";
// methods outside mal's, health's, reflection's and the Open Inference Protocol's count as
// "other", so callers cannot grow the label set) and status code name ("OK", "NOT_FOUND").
class RpcMetrics {
 public:
  RpcMetrics();
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  // Has `builder`'s server time every call here (its interceptor); `this` must outlive the
  // server. Sets the builder's interceptors: call it once, and add no others.
  void Instrument(grpc::ServerBuilder& builder);
  void Observe(const std::string& method, int code, double seconds);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* durations_;
};

}  // namespace mal::server

#endif  // MAL_SERVER_SERVICE_METRICS_H_
