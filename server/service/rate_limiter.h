#ifndef MAL_SERVER_SERVICE_RATE_LIMITER_H_
#define MAL_SERVER_SERVICE_RATE_LIMITER_H_

// A per-client sliding-window limit (submissions per minute, issue 14). Thread-safe; memory is
// bounded by the clients seen within one window (older ones are dropped as calls arrive).

#include <cstdint>
#include <deque>
#include <map>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace mal::server {

class RateLimiter {
 public:
  // At most `limit` calls per client within any `window_ms` (ms); limit 0: unlimited.
  RateLimiter(int limit, int64_t window_ms) : limit_(limit), window_ms_(window_ms) {}

  // Counts a call of `client` at `now_ms` and returns 0 when it is within the limit; otherwise
  // counts nothing and returns how long until the oldest call leaves the window (ms, >= 1).
  int64_t Acquire(const std::string& client, int64_t now_ms);

 private:
  const int limit_;
  const int64_t window_ms_;
  absl::Mutex mu_;
  std::map<std::string, std::deque<int64_t>> calls_ ABSL_GUARDED_BY(mu_);
  int64_t last_sweep_ms_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mal::server

#endif  // MAL_SERVER_SERVICE_RATE_LIMITER_H_
