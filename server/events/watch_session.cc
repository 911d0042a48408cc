#include "server/events/watch_session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace mal::server {

namespace {
constexpr absl::Duration kEventWait = absl::Milliseconds(500);
constexpr std::chrono::seconds kProgressEvery(2);
}  // namespace

absl::StatusOr<std::unique_ptr<WatchSession>> WatchSession::Start(EventHub* hub, StateFn state,
                                                                  const v1::WatchRequest& request) {
  RETURN_IF_ERROR(state().status());
  ASSIGN_OR_RETURN(
      std::unique_ptr<Subscription> sub,
      hub->Subscribe(request.experiment_id(), std::max<int64_t>(request.from_seq(), 1)));
  return std::unique_ptr<WatchSession>(
      new WatchSession(hub, std::move(state), request, std::move(sub)));
}

WatchSession::WatchSession(EventHub* hub, StateFn state, const v1::WatchRequest& request,
                           std::unique_ptr<Subscription> sub)
    : hub_(hub),
      state_(std::move(state)),
      experiment_(request.experiment_id()),
      kinds_(request.kinds().begin(), request.kinds().end()),
      sub_(std::move(sub)),
      last_sent_(std::max<int64_t>(request.from_seq(), 1) - 1),
      last_progress_(std::chrono::steady_clock::now()) {}

v1::WatchResponse WatchSession::Progress() {
  v1::WatchResponse r;
  auto latest = hub_->LastSeq(experiment_);
  r.mutable_progress()->set_latest_seq(latest.ok() ? *latest : last_sent_);
  auto st = state_();
  r.mutable_progress()->set_state(st.ok() ? *st : v1::EXPERIMENT_STATE_UNSPECIFIED);
  last_progress_ = std::chrono::steady_clock::now();
  return r;
}

bool WatchSession::NothingLeft() {
  auto st = state_();
  if (!st.ok() || *st == v1::EXPERIMENT_RUNNING) return false;
  auto latest = hub_->LastSeq(experiment_);
  return latest.ok() && *latest <= last_sent_;
}

absl::StatusOr<WatchSession::Step> WatchSession::Next(bool shutting_down) {
  Step step;
  if (!started_) {
    started_ = true;
    if (NothingLeft()) {  // started (or resumed) past the End event
      step.send.push_back(Progress());
      step.done = true;
      return step;
    }
  }
  if (shutting_down) {
    return absl::UnavailableError(
        absl::StrCat("coordinator shutting down; resume from seq ", last_sent_ + 1));
  }
  ASSIGN_OR_RETURN(std::optional<WatchEvent> next, sub_->Next(kEventWait));
  if (!next.has_value() || std::chrono::steady_clock::now() - last_progress_ > kProgressEvery) {
    // Periodic progress, whether events flow or not: it carries the latest seq.
    step.send.push_back(Progress());
  }
  if (!next.has_value()) {
    step.done = NothingLeft();
    return step;
  }
  last_sent_ = next->seq;
  if (kinds_.empty() || kinds_.count(next->kind)) {
    v1::WatchResponse r;
    v1::Event* ev = r.mutable_event();
    if (!ev->ParseFromString(next->payload)) {
      return absl::DataLossError(absl::StrCat("event ", next->seq, " is unreadable"));
    }
    ev->set_seq(next->seq);
    step.send.push_back(std::move(r));
  }
  step.done = next->kind == "end";
  return step;
}

}  // namespace mal::server
