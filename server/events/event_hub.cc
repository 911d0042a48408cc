#include "server/events/event_hub.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace mal::server {

namespace {
constexpr int kReplayPage = 256;
}  // namespace

Subscription::Subscription(EventHub* hub, std::string experiment, int64_t from_seq,
                           int64_t live_from, size_t capacity)
    : hub_(hub),
      experiment_(std::move(experiment)),
      live_from_(live_from),
      first_wanted_(std::max<int64_t>(from_seq, 1)),
      capacity_(capacity),
      next_replay_(std::max<int64_t>(from_seq, 1)) {}

Subscription::~Subscription() { hub_->Remove(this); }

bool Subscription::Ready() const { return !queue_.empty() || !ended_.ok(); }

Subscription::Offered Subscription::Offer(const WatchEvent& event) {
  if (event.seq < first_wanted_) return Offered::kIgnored;
  absl::MutexLock lock(&mu_);
  if (!ended_.ok()) return Offered::kIgnored;
  if (queue_.size() < capacity_) {
    queue_.push_back(event);
    return Offered::kQueued;
  }
  if (event.coalescable) {
    auto older = std::find_if(queue_.begin(), queue_.end(), [&](const WatchEvent& e) {
      return e.coalescable && e.kind == event.kind;
    });
    if (older != queue_.end()) {
      queue_.erase(older);
      queue_.push_back(event);
      return Offered::kCoalesced;
    }
  }
  ended_ = absl::ResourceExhaustedError(
      absl::StrCat("watcher of ", experiment_, " fell behind; resume from seq ", event.seq));
  return Offered::kEnded;
}

absl::StatusOr<std::optional<WatchEvent>> Subscription::Next(absl::Duration timeout) {
  // Replay what was written before the subscription started, from the store, page by page.
  if (replay_page_.empty() && next_replay_ < live_from_) {
    {
      absl::MutexLock lock(&mu_);
      if (!ended_.ok()) return ended_;
    }
    auto events = hub_->store_->ReadEvents(
        experiment_, next_replay_,
        static_cast<int>(std::min<int64_t>(kReplayPage, live_from_ - next_replay_)));
    if (!events.ok()) return events.status();
    for (Event& e : *events)
      replay_page_.push_back(WatchEvent{e.seq, e.kind, std::move(e.payload), false});
    next_replay_ = replay_page_.empty() ? live_from_ : replay_page_.back().seq + 1;
  }
  if (!replay_page_.empty()) {
    WatchEvent e = std::move(replay_page_.front());
    replay_page_.pop_front();
    return std::optional<WatchEvent>(std::move(e));
  }
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &Subscription::Ready), timeout);
  if (!queue_.empty()) {
    WatchEvent e = std::move(queue_.front());
    queue_.pop_front();
    return std::optional<WatchEvent>(std::move(e));
  }
  if (!ended_.ok()) return ended_;
  return std::optional<WatchEvent>();
}

void Subscription::Cancel() {
  absl::MutexLock lock(&mu_);
  if (ended_.ok()) ended_ = absl::CancelledError("watch cancelled");
  queue_.clear();
}

EventHub::EventHub(StateStore* store, size_t queue_capacity)
    : store_(store), capacity_(std::max<size_t>(queue_capacity, 1)) {}

absl::StatusOr<int64_t> EventHub::LastSeqLocked(const std::string& experiment) {
  auto it = last_seq_.find(experiment);
  if (it != last_seq_.end()) return it->second;
  ASSIGN_OR_RETURN(int64_t last, store_->LastEventSeq(experiment));
  last_seq_[experiment] = last;
  return last;
}

void EventHub::Forget(const std::string& experiment) {
  absl::MutexLock lock(&mu_);
  last_seq_.erase(experiment);
}

absl::StatusOr<int64_t> EventHub::LastSeq(const std::string& experiment) {
  absl::MutexLock lock(&mu_);
  return LastSeqLocked(experiment);
}

absl::StatusOr<int64_t> EventHub::Publish(const std::string& experiment, const std::string& kind,
                                          const std::string& payload, bool coalescable) {
  return PublishBatch(experiment, {Outgoing{kind, payload, coalescable}});
}

void EventHub::FanOut(const std::string& experiment, int64_t first_seq,
                      const std::vector<Outgoing>& events, size_t from) {
  last_seq_[experiment] = first_seq + static_cast<int64_t>(events.size() - from) - 1;
  auto it = watchers_.find(experiment);
  if (it == watchers_.end()) return;
  for (size_t i = from; i < events.size(); ++i) {
    const WatchEvent event{first_seq + static_cast<int64_t>(i - from), events[i].kind,
                           events[i].payload, events[i].coalescable};
    for (Subscription* s : it->second) {
      switch (s->Offer(event)) {
        case Subscription::Offered::kCoalesced:
          ++coalesced_;
          break;
        case Subscription::Offered::kEnded:
          ++ended_slow_;
          break;
        default:
          break;
      }
    }
  }
}

namespace {
std::vector<EventIn> ToStore(const std::vector<EventHub::Outgoing>& events) {
  std::vector<EventIn> out;
  out.reserve(events.size());
  for (const auto& e : events) out.push_back(EventIn{e.kind, e.payload});
  return out;
}
}  // namespace

absl::StatusOr<int64_t> EventHub::PublishBatch(const std::string& experiment,
                                               const std::vector<Outgoing>& events) {
  if (events.empty()) return LastSeq(experiment);
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(int64_t first, store_->AppendEvents(experiment, ToStore(events)));
  FanOut(experiment, first, events, 0);
  return first;
}

void EventHub::OfferCommitted(const std::string& experiment, const CommittedEvents& events) {
  if (events.appended.empty()) return;
  std::vector<Outgoing> out;
  out.reserve(events.appended.size());
  for (const EventIn& e : events.appended) out.push_back(Outgoing{e.kind, e.payload, false});
  FanOut(experiment, events.first_seq, out, 0);
}

absl::StatusOr<StateStore::Appended> EventHub::PublishRunEvents(
    const std::string& experiment, int64_t run_id, int64_t epoch, int64_t first_index,
    const std::vector<Outgoing>& events) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(StateStore::Appended a,
                   store_->AppendRunEvents(run_id, epoch, first_index, ToStore(events)));
  if (a.skipped < static_cast<int>(events.size()))
    FanOut(experiment, a.first_seq, events, a.skipped);
  return a;
}

absl::StatusOr<std::unique_ptr<Subscription>> EventHub::Subscribe(const std::string& experiment,
                                                                  int64_t from_seq) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(int64_t last, LastSeqLocked(experiment));
  std::unique_ptr<Subscription> s(
      new Subscription(this, experiment, from_seq, last + 1, capacity_));
  watchers_[experiment].push_back(s.get());
  return s;
}

void EventHub::Remove(Subscription* s) {
  absl::MutexLock lock(&mu_);
  auto it = watchers_.find(s->experiment());
  if (it == watchers_.end()) return;
  auto& v = it->second;
  v.erase(std::remove(v.begin(), v.end(), s), v.end());
  if (v.empty()) watchers_.erase(it);
}

EventHub::Stats EventHub::stats() {
  absl::MutexLock lock(&mu_);
  Stats st;
  for (const auto& [experiment, subs] : watchers_) st.watchers += static_cast<int64_t>(subs.size());
  st.coalesced = coalesced_;
  st.ended_slow = ended_slow_;
  return st;
}

}  // namespace mal::server
