#include "server/core/early_stopping.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mal::server {

namespace {
constexpr int kEta = 3;
}  // namespace

bool IsRungEpoch(int epoch) {
  int rung = 1;
  while (rung < epoch) rung *= kEta;
  return epoch >= 1 && rung == epoch;
}

std::optional<std::string> RecordRung(RungTable& rungs, int trial, int fold, int epoch,
                                      int total_epochs, double val_mean_f1) {
  if (!IsRungEpoch(epoch) || epoch >= total_epochs) return std::nullopt;
  std::map<int, double>& seen = rungs[{fold, epoch}];
  seen[trial] = val_mean_f1;
  const int keep = static_cast<int>(seen.size()) / kEta;
  if (keep < 1) return std::nullopt;
  int better = 0;
  for (const auto& [other, f1] : seen) better += other != trial && f1 > val_mean_f1;
  if (better < keep) return std::nullopt;
  return absl::StrCat("stopped early at epoch ", epoch, " of fold ", fold, ": validation F1 ",
                      absl::StrFormat("%.4f", val_mean_f1), " is not in the top ", keep, " of ",
                      seen.size(), " trials there");
}

}  // namespace mal::server
