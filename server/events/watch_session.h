#ifndef MAL_SERVER_EVENTS_WATCH_SESSION_H_
#define MAL_SERVER_EVENTS_WATCH_SESSION_H_

// The watch stream's policy, apart from gRPC: one WatchSession says what a client watching an
// experiment receives, in order: the events from `from_seq` (filtered by kind; the kinds left out
// still advance the position), a progress message (latest seq and experiment state) at least every
// 2 s and whenever 500 ms pass without an event, and the end of the stream after the End event, or
// at once when the watch starts past the end of a finished experiment's log.
// The gRPC adapter (server/service) only writes what Step returns.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mal/v1/service.pb.h"
#include "server/events/event_hub.h"

namespace mal::server {

class WatchSession {
 public:
  // The experiment's state now (the coordinator's); NotFound for an unknown experiment.
  using StateFn = std::function<absl::StatusOr<v1::ExperimentState>()>;

  // Subscribes to `request.experiment_id()` from max(request.from_seq(), 1). Errors: the state
  // function's (NotFound) and the hub's.
  static absl::StatusOr<std::unique_ptr<WatchSession>> Start(EventHub* hub, StateFn state,
                                                             const v1::WatchRequest& request);

  struct Step {
    std::vector<v1::WatchResponse> send;  // in order
    bool done = false;                    // the stream ends (OK) after `send`
  };
  // Waits at most 500 ms for the next event and returns what to send. `shutting_down`: Unavailable
  // naming the seq to resume from. A subscriber that fell behind: ResourceExhausted (the hub's);
  // an unreadable event: DataLoss naming its seq.
  absl::StatusOr<Step> Next(bool shutting_down);

  // The last seq delivered or skipped (from_seq - 1 before the first).
  int64_t last_seq() const { return last_sent_; }

 private:
  WatchSession(EventHub* hub, StateFn state, const v1::WatchRequest& request,
               std::unique_ptr<Subscription> sub);
  v1::WatchResponse Progress();
  // A terminal state and no event after last_seq(): the log is complete (the End event is appended
  // before the state turns terminal).
  bool NothingLeft();

  EventHub* const hub_;
  const StateFn state_;
  const std::string experiment_;
  const std::set<std::string> kinds_;
  std::unique_ptr<Subscription> sub_;
  int64_t last_sent_;
  bool started_ = false;
  std::chrono::steady_clock::time_point last_progress_;
};

}  // namespace mal::server

#endif  // MAL_SERVER_EVENTS_WATCH_SESSION_H_
