#ifndef MAL_SERVER_SERVICE_METRICS_HTTP_H_
#define MAL_SERVER_SERVICE_METRICS_HTTP_H_

// A minimal HTTP/1.0 endpoint for Prometheus: GET /metrics answers with the text exposition format
// from `render`; anything else is 404. One connection at a time, each with a 2 s timeout: enough
// for a scraper, and a slow client cannot hold it longer.

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace mal::server {

class MetricsHttpServer {
 public:
  // Listens on HOST:PORT (port 0 picks one); returns the server or the error.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::function<std::string()> render);
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port, std::function<std::string()> render);
  void Serve();

  const int fd_;
  const int port_;
  const std::function<std::string()> render_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace mal::server

#endif  // MAL_SERVER_SERVICE_METRICS_HTTP_H_
