#ifndef MAL_SERVER_EVENTS_EVENT_HUB_H_
#define MAL_SERVER_EVENTS_EVENT_HUB_H_

// The event log's live side (design.md, "Events and watch"): Publish appends an event durably to
// the StateStore and fans it out to the experiment's watchers; a watcher replays from any sequence
// number, then follows live, without gap or duplicate. Each watcher has a bounded queue: when it
// is full, coalescable events (weight summaries) give way to the latest of their kind; when only
// events that must never be dropped (loss points, state changes) are queued, the watcher is ended
// with ResourceExhausted naming the sequence number to resume from. Publish never waits for a
// watcher. No gRPC here: the Watch RPC is a thin adapter over Subscription.
//
// Thread-safety: EventHub and Subscription are safe to use from any threads; one consumer per
// Subscription.

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/state/state_store.h"

namespace mal::server {

struct WatchEvent {
  int64_t seq = 0;
  std::string kind;
  std::string payload;
  bool coalescable = false;  // a newer event of the same kind may replace it in a full queue
};

class EventHub;

// One watcher's view of one experiment.
class Subscription {
 public:
  ~Subscription();
  // The next event in sequence order; nullopt when none arrived within `timeout` (send a progress
  // message then). An error ends the subscription: ResourceExhausted (fell behind: resume from
  // the seq in the message), Cancelled (Cancel was called), or a store error.
  absl::StatusOr<std::optional<WatchEvent>> Next(absl::Duration timeout);
  // Ends the subscription; a blocked Next returns Cancelled.
  void Cancel();
  const std::string& experiment() const { return experiment_; }

 private:
  friend class EventHub;
  Subscription(EventHub* hub, std::string experiment, int64_t from_seq, int64_t live_from,
               size_t capacity);
  enum class Offered { kIgnored, kQueued, kCoalesced, kEnded };
  // Called by the hub, under its publish lock: enqueue or coalesce, or end the subscription.
  Offered Offer(const WatchEvent& event);
  bool Ready() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  EventHub* const hub_;
  const std::string experiment_;
  const int64_t live_from_;  // events below this come from the store, the rest from the queue
  const int64_t first_wanted_;
  const size_t capacity_;
  int64_t next_replay_;                 // consumer only
  std::deque<WatchEvent> replay_page_;  // consumer only

  mutable absl::Mutex mu_;
  std::deque<WatchEvent> queue_ ABSL_GUARDED_BY(mu_);
  absl::Status ended_ ABSL_GUARDED_BY(mu_);  // not OK once ended
};

class EventHub {
 public:
  // `store` must outlive the hub. `queue_capacity`: live events a watcher may have waiting.
  EventHub(StateStore* store, size_t queue_capacity);

  // Appends durably, then offers the event to every watcher of the experiment.
  absl::StatusOr<int64_t> Publish(const std::string& experiment, const std::string& kind,
                                  const std::string& payload, bool coalescable);
  struct Outgoing {
    std::string kind;
    std::string payload;
    bool coalescable = false;
  };
  // Appends a batch in one transaction, then offers it; returns the first seq.
  absl::StatusOr<int64_t> PublishBatch(const std::string& experiment,
                                       const std::vector<Outgoing>& events);
  // A worker's batch for a run (StateStore::AppendRunEvents: lease-checked, deduplicated).
  absl::StatusOr<StateStore::Appended> PublishRunEvents(const std::string& experiment,
                                                        int64_t run_id, int64_t epoch,
                                                        int64_t first_index,
                                                        const std::vector<Outgoing>& events);
  // Runs `move`, a StateStore write given `events` (RunEvents for a run's move, StateEvents for
  // a trial's or an experiment's state: the write and its events are one transaction), under the
  // publish lock, then offers the events it appended to the experiment's watchers (never
  // coalescable: state changes, fold and trial results), so that they see them in seq order.
  // Returns what `move` returns; nothing is offered when it fails.
  template <typename Move>
  auto Commit(const std::string& experiment, CommittedEvents& events, Move move)
      -> decltype(move()) {
    absl::MutexLock lock(&mu_);
    auto result = move();
    if (result.ok()) OfferCommitted(experiment, events);
    return result;
  }
  // Watches `experiment` from `from_seq` (1 = from the beginning).
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(const std::string& experiment,
                                                          int64_t from_seq);
  // The newest sequence number of the experiment (0 when it has none).
  absl::StatusOr<int64_t> LastSeq(const std::string& experiment);
  // Drops what the hub remembers of a deleted experiment (its newest sequence number).
  void Forget(const std::string& experiment);

  struct Stats {
    int64_t watchers = 0, coalesced = 0, ended_slow = 0;
  };
  Stats stats();

 private:
  friend class Subscription;
  void Remove(Subscription* s);
  void OfferCommitted(const std::string& experiment, const CommittedEvents& events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FanOut(const std::string& experiment, int64_t first_seq, const std::vector<Outgoing>& events,
              size_t from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int64_t> LastSeqLocked(const std::string& experiment)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  StateStore* const store_;
  const size_t capacity_;
  absl::Mutex mu_;  // held across append + fan-out, so watchers see events in seq order
  std::map<std::string, std::vector<Subscription*>> watchers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> last_seq_ ABSL_GUARDED_BY(mu_);
  int64_t coalesced_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ended_slow_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mal::server

#endif  // MAL_SERVER_EVENTS_EVENT_HUB_H_
