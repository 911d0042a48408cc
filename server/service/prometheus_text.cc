#include "server/service/prometheus_text.h"

#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace mal::server {

std::string PrometheusText(const CoordinatorCounters& c, const EventHub::Stats& watch) {
  std::map<std::string, int64_t> runs, experiments;
  for (RunState st : {RunState::kPending, RunState::kAssigned, RunState::kRunning,
                      RunState::kSucceeded, RunState::kFailed, RunState::kCancelled}) {
    runs[absl::AsciiStrToLower(RunStateName(st))] = 0;
  }
  for (int st : {v1::EXPERIMENT_RUNNING, v1::EXPERIMENT_SUCCEEDED, v1::EXPERIMENT_FAILED,
                 v1::EXPERIMENT_CANCELLED}) {
    experiments[absl::AsciiStrToLower(ExperimentStateName(st))] = 0;
  }
  for (const auto& [st, n] : c.runs_by_state) runs[absl::AsciiStrToLower(RunStateName(st))] += n;
  for (const auto& [st, n] : c.experiments_by_state)
    experiments[absl::AsciiStrToLower(ExperimentStateName(st))] += n;
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  };
  metric("mal_fold_runs", "gauge", "Fold runs by state.");
  for (const auto& [st, n] : runs)
    absl::StrAppend(&out, "mal_fold_runs{state=\"", st, "\"} ", n, "\n");
  metric("mal_experiments", "gauge", "Experiments by state.");
  for (const auto& [st, n] : experiments)
    absl::StrAppend(&out, "mal_experiments{state=\"", st, "\"} ", n, "\n");
  metric("mal_queue_length", "gauge", "Fold runs waiting for a worker slot.");
  absl::StrAppend(&out, "mal_queue_length ", runs["pending"], "\n");
  metric("mal_workers_alive", "gauge", "Registered workers whose lease holds.");
  absl::StrAppend(&out, "mal_workers_alive ", c.workers_alive, "\n");
  metric("mal_worker_slots", "gauge", "Slots of the live workers.");
  absl::StrAppend(&out, "mal_worker_slots ", c.worker_slots, "\n");
  metric("mal_assignments_total", "counter", "Fold runs assigned to workers.");
  absl::StrAppend(&out, "mal_assignments_total ", c.assignments, "\n");
  metric("mal_lease_expiries_total", "counter", "Workers whose lease lapsed.");
  absl::StrAppend(&out, "mal_lease_expiries_total ", c.lease_expiries, "\n");
  metric("mal_runs_lost_total", "counter", "Fold runs lost with their worker.");
  absl::StrAppend(&out, "mal_runs_lost_total ", c.runs_lost, "\n");
  metric("mal_watch_subscribers", "gauge", "Open watch streams.");
  absl::StrAppend(&out, "mal_watch_subscribers ", watch.watchers, "\n");
  metric("mal_watch_coalesced_total", "counter",
         "Weight summaries replaced by a newer one in a full watch queue.");
  absl::StrAppend(&out, "mal_watch_coalesced_total ", watch.coalesced, "\n");
  metric("mal_watch_ended_slow_total", "counter", "Watch streams ended for falling behind.");
  absl::StrAppend(&out, "mal_watch_ended_slow_total ", watch.ended_slow, "\n");
  return out;
}

}  // namespace mal::server
