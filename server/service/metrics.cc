#include "server/service/metrics.h"

#include <CivetServer.h>
#include <prometheus/exposer.h>

#include <chrono>
#include <exception>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mal::server {

namespace {

const char* CodeName(int code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

class RpcTimer : public grpc::experimental::Interceptor {
 public:
  RpcTimer(RpcMetrics* metrics, const char* method)
      : metrics_(metrics),
        method_(method ? method : ""),
        start_(std::chrono::steady_clock::now()) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->Observe(method_, methods->GetSendStatus().error_code(), seconds);
    }
    methods->Proceed();
  }

 private:
  RpcMetrics* const metrics_;
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
};

class RpcTimerFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcTimerFactory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcTimer(metrics_, info->method());
  }

 private:
  RpcMetrics* const metrics_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size())
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen ", listen, ": HOST:PORT"));
  std::unique_ptr<prometheus::Exposer> exposer;
  // civetweb's own reason for a failure comes through its log callback (the exception only
  // says "null context").
  static thread_local std::string civetweb_error;
  civetweb_error.clear();
  CivetCallbacks callbacks;
  callbacks.log_message = [](const mg_connection*, const char* message) {
    civetweb_error = message;
    return 1;
  };
  try {
    // civetweb takes "HOST:PORT" (IPv4) and "[V6]:PORT"; one thread is plenty for a scraper.
    exposer = std::make_unique<prometheus::Exposer>(listen, 1, &callbacks);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("--metrics-listen: cannot listen on ", listen, ": ",
                                               civetweb_error.empty() ? e.what() : civetweb_error));
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty())
    return absl::UnavailableError(absl::StrCat("--metrics-listen: cannot listen on ", listen));
  return std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint(std::move(exposer), ports[0]));
}

MetricsEndpoint::MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer, int port)
    : exposer_(std::move(exposer)), port_(port) {}

MetricsEndpoint::~MetricsEndpoint() { exposer_.reset(); }  // stops serving before collectables go

void MetricsEndpoint::Register(std::shared_ptr<prometheus::Collectable> collectable) {
  exposer_->RegisterCollectable(collectable);
  collectables_.push_back(std::move(collectable));
}

RpcMetrics::RpcMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      durations_(&prometheus::BuildHistogram()
                      .Name("mal_rpc_duration_seconds")
                      .Help("Time from a gRPC call's arrival to its status, by method and code.")
                      .Register(*registry_)) {}

void RpcMetrics::Instrument(grpc::ServerBuilder& builder) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(std::make_unique<RpcTimerFactory>(this));
  builder.experimental().SetInterceptorCreators(std::move(creators));
}

void RpcMetrics::Observe(const std::string& method, int code, double seconds) {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  const bool known = absl::StartsWith(method, "/mal.") || absl::StartsWith(method, "/grpc.") ||
                     absl::StartsWith(method, "/inference.");
  durations_->Add({{"method", known ? method : "other"}, {"code", CodeName(code)}}, kBuckets)
      .Observe(seconds);
}

}  // namespace mal::server
