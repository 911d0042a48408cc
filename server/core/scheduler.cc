#include "server/core/scheduler.h"

#include <algorithm>
#include <set>

namespace mal::server {

double PriorityWeight(int priority) {
  return priority >= 0 ? 1.0 + priority : 1.0 / (1.0 - priority);
}

namespace {

// The run of `e` that may start next, or 0.
int64_t NextRunOf(const Experiment& e) {
  std::set<int> started, open;
  for (const Trial& t : e.trials) {
    if (t.state == TrialState::kOpen) open.insert(t.trial);
  }
  for (const auto& [rid, r] : e.runs) {
    if (open.count(r.trial) && (r.state != RunState::kPending || r.attempt > 0))
      started.insert(r.trial);
  }
  const int concurrent = std::max(1, e.spec.search().concurrent());
  int64_t candidate = 0;
  bool candidate_started = false;
  for (const auto& [rid, r] : e.runs) {
    // The final fit (fold 0) belongs to a finished trial and always may start.
    if (r.state != RunState::kPending || (!open.count(r.trial) && r.fold != 0)) continue;
    const bool s = started.count(r.trial) > 0 || r.fold == 0;
    if (!s && static_cast<int>(started.size()) >= concurrent) continue;
    if (candidate == 0 || (s && !candidate_started)) {
      candidate = rid;
      candidate_started = s;
    }
    if (candidate_started) break;
  }
  return candidate;
}

}  // namespace

std::optional<RunChoice> PickNextRun(const std::map<std::string, Experiment>& experiments) {
  std::optional<RunChoice> chosen;
  double chosen_load = 0;
  for (const auto& [id, e] : experiments) {
    if (e.row.state != v1::EXPERIMENT_RUNNING) continue;
    const int64_t candidate = NextRunOf(e);
    if (candidate == 0) continue;
    int held = 0;
    for (const auto& [rid, r] : e.runs) held += IsHeld(r.state);
    const double load = held / PriorityWeight(e.row.priority);
    // Ties to the oldest: by N of exp-N (the map's text order put exp-10 before exp-2).
    if (!chosen || load < chosen_load ||
        (load == chosen_load && ExperimentNumber(id) < ExperimentNumber(chosen->experiment_id))) {
      chosen = RunChoice{id, candidate};
      chosen_load = load;
    }
  }
  return chosen;
}

}  // namespace mal::server
