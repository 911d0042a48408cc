#ifndef MAL_WORKER_ENGINE_RUN_OUTPUT_H_
#define MAL_WORKER_ENGINE_RUN_OUTPUT_H_

// What a fold run writes as it trains, apart from torch: the run directory's logs (records.csv,
// summaries.jsonl, metrics.json; names in common/util/run_files.h, contents in docs/engine.md),
// trimmed to the checkpoint on resume, and the progress shown on stderr.

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensorboard/event_writer.h"
#include "worker/engine/trainer.h"

namespace mal::engine {

class RunLog {
 public:
  // Opens the logs in `out_dir`. Fresh (`resume_iteration` < 0): records.csv with its header and
  // an empty summaries.jsonl. Resumed from a checkpoint at global iteration `resume_iteration` in
  // epoch `resume_epoch`: keeps the records and summaries up to that iteration and the epochs of
  // metrics.json before that epoch (each line read with a JSON parser), drops the rest. Errors:
  // the files unreadable or unwritable (naming the file).
  // `tensorboard`: also write TensorBoard event files into out_dir/tensorboard (appended and
  // flushed as they come; a resumed run adds a file, TensorBoard merges them).
  static absl::StatusOr<std::unique_ptr<RunLog>> Open(const std::string& out_dir,
                                                      int64_t resume_iteration,
                                                      int64_t resume_epoch,
                                                      bool tensorboard = false);
  // Appends one row / one line and flushes.
  void Iteration(const IterationRecord& r);
  void Summary(const WeightSummary& s);
  // Adds the epoch and rewrites metrics.json ({"epochs": [...]}, one epoch per line) atomically.
  absl::Status Epoch(const EpochRecord& e);
  // The last epoch's line of metrics.json (kept from before a resume, or added since); "" when
  // none.
  const std::string& LastEpochJson() const;

 private:
  RunLog() = default;
  std::string metrics_path_;
  std::vector<std::string> epochs_;  // one JSON object per finished epoch
  std::ofstream records_, summaries_;
  std::unique_ptr<tensorboard::EventWriter> tensorboard_;  // null unless asked for
};

// One epoch as a JSON object on one line (metrics.json, and model.json's "metrics").
std::string EpochJson(const EpochRecord& e);
// Numbers as a JSON array, 6 significant digits.
std::string JsonList(const std::vector<double>& v);

// Progress on stderr: a bar on a terminal, a plain line every `log_every` iterations otherwise,
// none when disabled (--quiet); one line per epoch in every case.
class Progress {
 public:
  Progress(bool enabled, int64_t per_epoch, int epochs);
  void Iteration(const IterationRecord& r, int64_t in_epoch, int log_every);
  void Epoch(const EpochRecord& e);

 private:
  bool enabled_, tty_;
  int64_t per_epoch_;
  int epochs_;
};

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_RUN_OUTPUT_H_
