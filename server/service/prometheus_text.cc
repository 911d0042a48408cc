#include "server/service/prometheus_text.h"

#include <prometheus/text_serializer.h>

#include <map>

#include "absl/strings/ascii.h"

namespace mal::server {

std::vector<prometheus::MetricFamily> CoordinatorFamilies(const CoordinatorCounters& c,
                                                          const EventHub::Stats& watch) {
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

  std::vector<prometheus::MetricFamily> out;
  auto family = [&](const char* name, prometheus::MetricType type, const char* help) {
    out.push_back(prometheus::MetricFamily{name, help, type, {}});
    return &out.back();
  };
  auto sample = [](prometheus::MetricFamily* f, double value, const char* label = nullptr,
                   const std::string& label_value = "") {
    prometheus::ClientMetric m;
    if (label != nullptr) m.label.push_back({label, label_value});
    if (f->type == prometheus::MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    f->metric.push_back(std::move(m));
  };
  using prometheus::MetricType;
  auto* f = family("mal_fold_runs", MetricType::Gauge, "Fold runs by state.");
  for (const auto& [st, n] : runs) sample(f, static_cast<double>(n), "state", st);
  f = family("mal_experiments", MetricType::Gauge, "Experiments by state.");
  for (const auto& [st, n] : experiments) sample(f, static_cast<double>(n), "state", st);
  sample(family("mal_queue_length", MetricType::Gauge, "Fold runs waiting for a worker slot."),
         static_cast<double>(runs["pending"]));
  sample(family("mal_workers_alive", MetricType::Gauge, "Registered workers whose lease holds."),
         static_cast<double>(c.workers_alive));
  sample(family("mal_worker_slots", MetricType::Gauge, "Slots of the live workers."),
         static_cast<double>(c.worker_slots));
  sample(family("mal_assignments_total", MetricType::Counter, "Fold runs assigned to workers."),
         static_cast<double>(c.assignments));
  sample(family("mal_lease_expiries_total", MetricType::Counter, "Workers whose lease lapsed."),
         static_cast<double>(c.lease_expiries));
  sample(family("mal_runs_lost_total", MetricType::Counter, "Fold runs lost with their worker."),
         static_cast<double>(c.runs_lost));
  sample(family("mal_watch_subscribers", MetricType::Gauge, "Open watch streams."),
         static_cast<double>(watch.watchers));
  sample(family("mal_watch_coalesced_total", MetricType::Counter,
                "Weight summaries replaced by a newer one in a full watch queue."),
         static_cast<double>(watch.coalesced));
  sample(family("mal_watch_ended_slow_total", MetricType::Counter,
                "Watch streams ended for falling behind."),
         static_cast<double>(watch.ended_slow));
  return out;
}

std::string PrometheusText(const CoordinatorCounters& counters, const EventHub::Stats& watch) {
  return prometheus::TextSerializer().Serialize(CoordinatorFamilies(counters, watch));
}

}  // namespace mal::server
