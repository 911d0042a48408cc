#include "server/service/rate_limiter.h"

#include <algorithm>

namespace mal::server {

int64_t RateLimiter::Acquire(const std::string& client, int64_t now_ms) {
  if (limit_ <= 0) return 0;
  absl::MutexLock lock(&mu_);
  auto expire = [&](std::deque<int64_t>& q) {
    while (!q.empty() && q.front() <= now_ms - window_ms_) q.pop_front();
  };
  // Once per window: forget clients without a call in it.
  if (now_ms - last_sweep_ms_ >= window_ms_) {
    for (auto it = calls_.begin(); it != calls_.end();) {
      expire(it->second);
      it = it->second.empty() ? calls_.erase(it) : std::next(it);
    }
    last_sweep_ms_ = now_ms;
  }
  std::deque<int64_t>& q = calls_[client];
  expire(q);
  if (static_cast<int>(q.size()) >= limit_)
    return std::max<int64_t>(1, q.front() + window_ms_ - now_ms);
  q.push_back(now_ms);
  return 0;
}

}  // namespace mal::server
