#ifndef MAL_SERVER_CORE_EARLY_STOPPING_H_
#define MAL_SERVER_CORE_EARLY_STOPPING_H_

// The early-stopping policy (search.early_stopping): ASHA-style successive halving on validation
// F1 at rung epochs 1, 3, 9, ... (eta = 3). A pure function of the rung table; the coordinator
// stops the trial it names.

#include <map>
#include <optional>
#include <string>
#include <utility>

namespace mal::server {

// Validation mean F1 per (fold, rung epoch), per trial (Experiment::rungs).
using RungTable = std::map<std::pair<int, int>, std::map<int, double>>;

// Records that `trial` reached `epoch` of `total_epochs` on `fold` with validation mean F1
// `val_mean_f1` (in [0, 1]). When `epoch` is a rung before the last epoch, the trial's value is
// stored in `rungs`, and if at least eta trials reached that rung on that fold and the trial is
// not in the top 1/eta of them (strictly more than floor(n / eta) others scored higher), returns
// the reason to stop it (a sentence naming epoch, fold, F1 and the cut). nullopt: keep going.
std::optional<std::string> RecordRung(RungTable& rungs, int trial, int fold, int epoch,
                                      int total_epochs, double val_mean_f1);

// True when `epoch` (from 1) is a rung epoch: 1, 3, 9, 27, ...
bool IsRungEpoch(int epoch);

}  // namespace mal::server

#endif  // MAL_SERVER_CORE_EARLY_STOPPING_H_
