#ifndef MAL_SERVER_CORE_SCHEDULER_H_
#define MAL_SERVER_CORE_SCHEDULER_H_

// The scheduling policy: which pending fold run a free worker slot takes next. A pure function of
// the in-memory view (no clock, no store, no locks); the coordinator applies its answer.

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "server/core/experiment.h"

namespace mal::server {

struct RunChoice {
  std::string experiment_id;
  int64_t run_id = 0;
};

// Weighted fair share across RUNNING experiments: the one with the fewest held (ASSIGNED or
// RUNNING) runs per unit of weight goes first, weight 1 + priority for priority >= 0 and
// 1 / (1 - priority) below (ties: the oldest, by N of exp-N). Within an experiment: a PENDING run
// of an open trial, runs of trials already under way first (a trial counts as under way once any
// of its runs left PENDING or was retried), at most search.concurrent trials under way (at least
// 1), then by run id; the final fit (fold 0) may always start. nullopt when nothing may start.
std::optional<RunChoice> PickNextRun(const std::map<std::string, Experiment>& experiments);

// The share weight of a priority (see PickNextRun).
double PriorityWeight(int priority);

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_SCHEDULER_H_
