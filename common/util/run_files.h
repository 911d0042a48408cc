#ifndef MAL_COMMON_UTIL_RUN_FILES_H_
#define MAL_COMMON_UTIL_RUN_FILES_H_

// The run-directory layout, shared by the engine that writes it (worker/engine/trainer.cc), the
// worker daemon that uploads and fetches it (worker/daemon) and the coordinator that registers its
// models (server/core): names relative to a fold run's output directory, which are also the
// artifact names on the coordinator. docs/engine.md describes each file's contents.

#include <cstdio>
#include <string>

namespace mal::run_files {

inline constexpr char kCheckpoint[] = "checkpoint.pt";   // resumable state (torch_file.h)
inline constexpr char kModel[] = "model.pt";             // the trained model (torch.load-able)
inline constexpr char kModelMetadata[] = "model.json";   // its metadata (AUs, input, thresholds)
inline constexpr char kMetrics[] = "metrics.json";       // per-epoch F1 and weight summaries
inline constexpr char kRecords[] = "records.csv";        // per-iteration losses and weights
inline constexpr char kSummaries[] = "summaries.jsonl";  // per-epoch weight summaries (watch)
inline constexpr char kWeightsDir[] = "weights";         // per-sample weights, one CSV per epoch
// Beside the output directory, in the daemon's run directory:
inline constexpr char kSpec[] = "spec.pb";  // the assignment's spec, serialized (spec.h, LoadSpecFile)
inline constexpr char kLog[] = "log.txt";     // the engine's stdout and stderr

// "weights/epoch_NNN.csv" for `epoch` (from 1; three digits at least).
inline std::string WeightsCsv(int epoch) {
  char name[40];
  std::snprintf(name, sizeof name, "%s/epoch_%03d.csv", kWeightsDir, epoch);
  return name;
}

}  // namespace mal::run_files

#endif  // MAL_COMMON_UTIL_RUN_FILES_H_
