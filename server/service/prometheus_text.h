#ifndef MAL_SERVER_SERVICE_PROMETHEUS_TEXT_H_
#define MAL_SERVER_SERVICE_PROMETHEUS_TEXT_H_

// The coordinator's monitoring counts as typed Prometheus metric families (prometheus-cpp's
// data model, serialised by its TextSerializer): mal_fold_runs{state} and mal_experiments{state}
// (gauges, every state listed, zeros included), mal_queue_length, mal_workers_alive,
// mal_worker_slots, mal_watch_subscribers (gauges) and mal_assignments_total,
// mal_lease_expiries_total, mal_runs_lost_total, mal_watch_coalesced_total,
// mal_watch_ended_slow_total (counters since the coordinator started), each with HELP and TYPE.

#include <prometheus/metric_family.h>

#include <string>
#include <vector>

#include "server/core/coordinator.h"
#include "server/events/event_hub.h"

namespace mal::server {

std::vector<prometheus::MetricFamily> CoordinatorFamilies(const CoordinatorCounters& counters,
                                                          const EventHub::Stats& watch);
// The same in the text exposition format 0.0.4.
std::string PrometheusText(const CoordinatorCounters& counters, const EventHub::Stats& watch);

}  // namespace mal::server

#endif  // MAL_SERVER_SERVICE_PROMETHEUS_TEXT_H_
