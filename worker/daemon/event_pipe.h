#ifndef MAL_WORKER_DAEMON_EVENT_PIPE_H_
#define MAL_WORKER_DAEMON_EVENT_PIPE_H_

// The engine child's events to its daemon: one mal.v1.Event per line, as JSON, on a pipe.
// No torch here (the engine's records are plain structs).

#include <chrono>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "mal/v1/service.pb.h"
#include "worker/engine/trainer.h"

namespace mal::worker {

v1::Event ToEvent(const engine::IterationRecord& r);
v1::Event ToEvent(const engine::WeightSummary& s);
v1::Event ToEvent(const engine::EpochRecord& r);

// One line (with its '\n').
std::string EncodeEventLine(const v1::Event& event);
absl::StatusOr<v1::Event> DecodeEventLine(const std::string& line);

// An EngineProgress event (progress.units = `units`).
v1::Event ProgressEvent(int64_t units);

// A RecordSink that writes every record to a file descriptor (the pipe to the daemon). Writes
// that fail (the daemon went away) are ignored: the run's files still have everything.
// Thread-safe: the records come from the training thread, progress events from the sink's own.
class PipeSink : public engine::RecordSink {
 public:
  explicit PipeSink(int fd) : fd_(fd) {}
  ~PipeSink() override { StopProgressReports(); }
  PipeSink(const PipeSink&) = delete;
  PipeSink& operator=(const PipeSink&) = delete;
  void OnIteration(const engine::IterationRecord& r) override { Write(ToEvent(r)); }
  void OnWeightSummary(const engine::WeightSummary& s) override { Write(ToEvent(s)); }
  void OnEpoch(const engine::EpochRecord& r) override { Write(ToEvent(r)); }
  // The last line: how training ended (RunOutcome). Engine errors are not retryable (a bad spec, a
  // missing dataset, a non-finite loss or an out-of-memory fail the same way on another worker);
  // kCancelled (told to stop) is, as the run resumes from its checkpoint.
  // Stops the progress reports first, so the outcome is the last line.
  void Finish(const absl::Status& status);

  // Starts a thread that writes ProgressEvent(ProgressCount()) (common/util/progress.h) at the end
  // of every `interval` (ms) in which the count moved: the daemon's evidence that a run that sends
  // no record for a while (a long evaluation, a dataset being generated) is not stuck. Call once.
  void StartProgressReports(std::chrono::milliseconds interval);
  void StopProgressReports();

 private:
  void Write(const v1::Event& event);
  absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_);
  bool stop_reports_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reporter_;
};

}  // namespace mal::worker

#endif  // MAL_WORKER_DAEMON_EVENT_PIPE_H_
